"""The stage cache: a stage is computed once, marked done only when it ended well, and
two processes that want the same stage compute it once between them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mdd.cache import Stage, claim, digest, folder_identity


def _stage(tmp_path: Path, key: str = "k1") -> Stage:
    return Stage("finetune", key, tmp_path / "finetune" / key)


def test_a_claimed_stage_is_computed_once_and_marked_done_when_its_body_ends(
    tmp_path: Path,
) -> None:
    stage = _stage(tmp_path)
    computed: list[Path] = []

    def compute(folder: Path) -> None:
        computed.append(folder)
        (folder / "value.txt").write_text("42")

    def load(folder: Path) -> str:
        return (folder / "value.txt").read_text()

    with claim(stage) as held:
        assert not held.cached
        assert held.get(compute, load) == "42"
        assert held.get(compute, load) == "42"  # a second get in the same claim reads
        assert not stage.cached  # done only once the body has ended
    assert computed == [stage.folder]
    record = json.loads((stage.folder / "done.json").read_text())
    assert record["key"] == "k1" and record["wall_s"] >= 0
    assert stage.cached and stage.wall_s == record["wall_s"]

    with claim(stage) as held:
        assert held.cached
        assert held.get(compute, load) == "42"
    assert computed == [stage.folder]  # read back, not recomputed


def test_a_stage_whose_body_fails_is_not_marked_done_and_is_computed_again(
    tmp_path: Path,
) -> None:
    stage = _stage(tmp_path)
    with pytest.raises(RuntimeError, match="loss became nan"):
        with claim(stage) as held:
            held.get(lambda folder: (folder / "partial").write_text("x"), lambda f: None)
            raise RuntimeError("loss became nan")
    assert not stage.cached and stage.wall_s == 0.0
    calls = []
    with claim(stage) as held:
        assert not held.cached
        held.get(lambda folder: calls.append(folder), lambda folder: None)
    assert calls == [stage.folder] and stage.cached


# Each process says it has started, then claims the stage; the computation waits until both
# have started, so the second is blocked on the lock while the first computes.
CLAIMING = """
import sys, time
from pathlib import Path
from mdd.cache import Stage, claim

root, me, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
(root / f"started-{me}").touch()
stage = Stage("sample", "shared", root / "surrogate" / "shared")

def compute(folder):
    deadline = time.monotonic() + 120
    while not (root / f"started-{other}").exists():
        if time.monotonic() > deadline:
            sys.exit("the other process never started")
        time.sleep(0.05)
    with open(root / "computations", "a") as handle:
        handle.write(me + "\\n")
    (folder / "made-by").write_text(me)

with claim(stage) as held:
    print((held.get(compute, lambda folder: (folder / "made-by").read_text())))
"""


def test_two_processes_claiming_one_stage_compute_it_once(tmp_path: Path) -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMING, str(tmp_path), me, other],
            stdout=subprocess.PIPE,
            text=True,
        )
        for me, other in (("a", "b"), ("b", "a"))
    ]
    outputs = [process.communicate(timeout=300)[0].strip() for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    computations = (tmp_path / "computations").read_text().split()
    assert len(computations) == 1
    assert outputs == computations * 2  # the other process read what the first made


def test_keys_and_folder_identities_follow_content(tmp_path: Path) -> None:
    assert digest("base", {"a": 1, "b": 2}) == digest("base", {"b": 2, "a": 1})
    assert digest("base", 1) != digest("base", 2)
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\x00" * 8)
    first = folder_identity(folder)
    (folder / "weights.bin").write_bytes(b"\x01" * 9)
    assert folder_identity(folder) != first
