"""Result files: one small JSON per finished cell of a quality benchmark, kept in the repository.

A cell of ``benchmarks/quality_fmnist.py`` takes from minutes to hours on a CPU, and the
stage cache that would resume it lives in the ignored ``runs/`` folder. So each finished
cell writes ``benchmarks/results/<dataset>/<column>-ipc<N>.json``: what was run (the
composition, IPC, protocol, config hash), what came out (each network's last- and
best-epoch accuracy, their mean and std, the surrogate set's diagnostics), what it cost
(distillation and evaluation wall time) and where (machine, torch, git commit). The grid
fills over days and machines; the README's table is rendered from these files and
``mdd report --results FOLDER`` reads them as it reads MLflow runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mdd.atomic import write_json_atomically

SCHEMA = 1
_NAME = re.compile(r"(?P<column>[a-z0-9+-]+)-ipc(?P<ipc>\d+)\.json")


SETS = "sets"  # subfolder of the further sets' files, so a folder's cells stay one per file
_SET_NAME = re.compile(r"(?P<column>[a-z0-9+-]+)-ipc(?P<ipc>\d+)-set(?P<index>\d+)\.json")


def result_path(folder: Path, column: str, ipc: int) -> Path:
    return folder / f"{column}-ipc{ipc}.json"


def set_path(folder: Path, column: str, ipc: int, index: int) -> Path:
    """Set ``index`` of a cell drawn with several set seeds: 0 is the cell's own file."""
    if index == 0:
        return result_path(folder, column, ipc)
    return folder / SETS / f"{column}-ipc{ipc}-set{index}.json"


def read_sets(folder: Path) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Every cell of ``folder`` with further sets: (column, IPC) -> its records, set 0 first.

    A cell counts its sets in order from 0 and stops at the first one missing, so a set
    whose file went astray never leaves a gap that pairs set k of one column with another
    column's set k + 1.
    """
    found: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    for path in sorted((folder / SETS).glob("*.json")):
        if (match := _SET_NAME.fullmatch(path.name)) and (record := read_result(path)):
            cell = (match["column"], int(match["ipc"]))
            found.setdefault(cell, {})[int(match["index"])] = record
    cells = {}
    for (column, ipc), sets in found.items():
        if (own := read_result(result_path(folder, column, ipc))) is None:
            continue
        sets[0] = own
        count = next(index for index in range(len(sets) + 1) if index not in sets)
        cells[(column, ipc)] = [sets[index] for index in range(count)]
    return cells


def read_result(path: Path) -> dict[str, Any] | None:
    """The record in ``path``, or None if there is none (or it is not a result file)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("schema") == SCHEMA else None


def write_result(path: Path, record: dict[str, Any]) -> None:
    """Write atomically: a benchmark stopped mid-write leaves the old file or none."""
    write_json_atomically(path, {"schema": SCHEMA, **record}, indent=2, sort_keys=True)


def read_results(folder: Path) -> list[dict[str, Any]]:
    """Every result file in ``folder`` (by file name), each with the ``file`` it came from.

    Other JSON files, and files of another schema, are left out: a folder may hold notes.
    """
    records = []
    for path in sorted(folder.glob("*.json")):
        if _NAME.fullmatch(path.name) and (record := read_result(path)) is not None:
            records.append({**record, "file": path.name})
    return records
