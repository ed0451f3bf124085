"""A short fingerprint of a dataset: which files (and sizes) and which validation split.

Two runs with the same fingerprint trained and tuned on the same images; logging it
makes a silently swapped or re-downloaded dataset visible.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path


def file_entries(files: Iterable[Path], root: Path, prefix: str) -> list[tuple[str, int]]:
    """(``prefix/relative path``, size in bytes) per file; relative so that moving the data
    folder keeps the fingerprint."""
    return [(f"{prefix}/{p.relative_to(root).as_posix()}", p.stat().st_size) for p in files]


def dataset_fingerprint(
    entries: Iterable[tuple[str, int]], split_seed: int, val_per_class: int
) -> str:
    """sha256 (first 16 hex digits) of the sorted (name, size) list and the split settings."""
    blob = json.dumps(
        {"files": sorted(entries), "split_seed": split_seed, "val_per_class": val_per_class}
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
