"""mdd/atomic.py: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from mdd.atomic import write_atomically, write_json_atomically


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    write_json_atomically(path, {"acc": 72.61})

    def half_then_fail(temporary: Path) -> None:
        temporary.write_text('{"acc": 7')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        write_atomically(path, half_then_fail)

    assert json.loads(path.read_text()) == {"acc": 72.61}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_the_new_file_replaces_the_old_one_readable_by_all_in_a_new_folder(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "cell.json"
    write_json_atomically(path, {"acc": 1}, indent=2)
    write_json_atomically(path, {"acc": 2}, indent=2)

    assert path.read_text() == '{\n  "acc": 2\n}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["cell.json"]
