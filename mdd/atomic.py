"""The one way mdd writes a file that others may read while it is written.

A reader (another sweep worker, a resumed benchmark, the stage cache) sees the old file or
the new one, never half of one: the content goes to a private file beside the target,
which one rename then puts in place. Concurrent writers of the same path each write their
own temporary file, and the last rename wins.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomically(path: Path, write: Callable[[Path], None], mode: int = 0o644) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it onto ``path``.

    ``mode`` replaces mkstemp's private 0600: files mdd keeps are for whoever reads the
    checkout or the cache. On any error the temporary file is removed and nothing replaced.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json_atomically(path: Path, value: Any, **dump: Any) -> None:
    """``value`` as JSON (``json.dump`` options in ``dump``) with a final newline."""

    def write(temporary: Path) -> None:
        with temporary.open("w", encoding="utf-8") as out:
            json.dump(value, out, **dump)
            out.write("\n")

    write_atomically(path, write)
