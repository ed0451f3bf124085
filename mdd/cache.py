"""The stage cache: content-addressed folders, their locks and their ``done.json``.

A stage's folder is named by the hash of everything its result depends on (``mdd.pipeline.plan``
computes the keys), so a second run with the same settings finds the result instead of
recomputing it. ``claim`` is the only writer of ``done.json``: a stage counts as cached
once its computation finished without error, never half-way.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from safetensors.torch import save_file

from mdd.atomic import write_atomically, write_json_atomically

DONE_FILE = "done.json"
T = TypeVar("T")


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-able parts: the name of a stage's folder."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# Content hashes of checkpoint folders, by their files' names, sizes and mtimes: a plan is
# made for every run and sweep trial, and re-reading a base's weights each time is waste.
_IDENTITIES: dict[tuple[Any, ...], str] = {}


def folder_identity(path: Path) -> str:
    """Content hash of a (small) checkpoint folder's files, for cache keys."""
    files = sorted(file for file in path.rglob("*") if file.is_file())
    stats = [file.stat() for file in files]
    stamps = tuple(
        (file.relative_to(path).as_posix(), stat.st_size, stat.st_mtime_ns)
        for file, stat in zip(files, stats, strict=True)
    )
    known = (str(path.resolve()), stamps)
    if known not in _IDENTITIES:
        hashed = hashlib.sha256()
        for file in files:
            hashed.update(file.relative_to(path).as_posix().encode())
            hashed.update(file.read_bytes())
        _IDENTITIES[known] = hashed.hexdigest()[:16]
    return _IDENTITIES[known]


def file_identity(path: Path) -> str:
    """Content hash of one file (a teacher's weights), for cache keys; memoised as above."""
    stat = path.stat()
    known = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if known not in _IDENTITIES:
        hashed = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hashed.update(block)
        _IDENTITIES[known] = hashed.hexdigest()[:16]
    return _IDENTITIES[known]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing) for the body's duration."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Stage:
    """One step of a run and the folder its result lives in."""

    name: str
    key: str
    folder: Path

    @property
    def cached(self) -> bool:
        return (self.folder / DONE_FILE).is_file()

    @property
    def wall_s(self) -> float:
        """How long the stage took when it was computed (0 if that was not recorded)."""
        if not self.cached:
            return 0.0
        return float(json.loads((self.folder / DONE_FILE).read_text()).get("wall_s", 0.0))


@dataclass
class Claim:
    """A stage held under its lock: ``get`` computes it once, or reads what is there."""

    stage: Stage
    cached: bool  # found done when the lock was taken
    computed: bool = False

    @property
    def folder(self) -> Path:
        return self.stage.folder

    def get(self, compute: Callable[[Path], Any], load: Callable[[Path], T]) -> T:
        """``load(folder)``, after ``compute(folder)`` when the stage is not cached yet."""
        if not self.cached and not self.computed:
            self.folder.mkdir(parents=True, exist_ok=True)
            compute(self.folder)
            self.computed = True
        return load(self.folder)


@contextlib.contextmanager
def claim(stage: Stage) -> Iterator[Claim]:
    """Hold ``stage``'s lock; a stage computed in the body is marked done when it ends well.

    One process computes a stage; others with the same key wait here, then find it cached
    (sweep workers on one machine share the cache, and two trials may need the same base
    model or fine-tuning at the same moment). ``done.json`` keeps the body's wall time.
    """
    with file_lock(stage.folder.parent / f"{stage.key}.lock"):
        started = time.perf_counter()
        held = Claim(stage, cached=stage.cached)
        yield held
        if not held.cached:
            stage.folder.mkdir(parents=True, exist_ok=True)
            record = {"key": stage.key, "wall_s": time.perf_counter() - started}
            write_json_atomically(stage.folder / DONE_FILE, record, indent=2)


def lock_path(path: Path) -> Path:
    """The lock a file computed once (``computed_once``) is written under, beside it."""
    return path.with_suffix(".lock")


def computed_once(path: Path, read: Callable[[], T], compute: Callable[[], T]) -> T:
    """``read()`` where ``path`` exists, else ``compute()``, which writes ``path``, under
    ``path``'s lock: processes that miss it together (sweep workers) queue, the first
    computes and the others read what it wrote."""
    if path.is_file():
        return read()
    with file_lock(lock_path(path)):
        if path.is_file():  # written while this process waited
            return read()
        return compute()


def save_tensors_atomically(tensors: dict[str, Any], path: Path) -> None:
    """Write a safetensors file so that no reader ever sees half of it: concurrent writers
    (sweep workers computing the same thing) each write their own file, then one atomic
    rename wins."""
    on_cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_atomically(path, lambda temporary: save_file(on_cpu, str(temporary)))
