"""Reading a finished sweep back: the best trial of one of its studies, for later runs to reuse."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from mdd.sweep.config import load_sweep
from mdd.sweep.summary import best_trial
from mdd.sweep.worker import DEFAULT_STORAGE, _storage_error, study_name


@dataclass(frozen=True)
class SweptBest:
    """The best complete trial of a study, and where it was found."""

    study: str
    storage: str
    number: int
    values: list[float]
    params: dict[str, Any]


def _sqlite_file(url: str) -> Path | None:
    return Path(url.split(":///", 1)[1]) if url.startswith("sqlite:///") else None


def best_params(
    sweep_path: str | Path, storage: str | None = None, ipc: int | None = None
) -> SweptBest | None:
    """The best trial of the sweep's study at ``ipc`` (default: the sweep's first IPC).

    ``storage`` defaults as in ``mdd-sweep``: the sweep file's ``storage``, else
    ``runs/optuna.db`` under the working directory. None when there is no such study yet,
    or it has no complete trial; a missing sqlite file is not created.
    """
    sweep, _ = load_sweep(sweep_path)
    url = storage or sweep.storage or f"sqlite:///{Path.cwd() / DEFAULT_STORAGE}"
    database = _sqlite_file(url)
    if database is not None and not database.is_file():
        return None
    name = study_name(sweep, sweep.ipc[0] if ipc is None else ipc)
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:  # Optuna's answer for a study name that is not in the storage
        return None
    except Exception as exc:  # noqa: BLE001 - any driver error means the same to the user
        raise _storage_error(url, exc) from None
    best = best_trial(study)
    if best is None:
        return None
    return SweptBest(name, url, best.number, list(best.values), dict(best.params))
