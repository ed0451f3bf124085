"""Do two versions of mdd write the same stage outputs? The smoke cases, here and at REV.

A refactor that means to change nothing must leave every stage's files as they were. This
runs each case below (``experiments/smoke.yaml`` with its overrides) through ``mdd-run`` with
this checkout and with REV (checked out into a temporary git worktree), each tree in an
empty cache folder of its own, one after the other on this machine, and compares every file
of the two caches by SHA-256. JSON files are compared with the fields that time a stage
(``wall_s``, images or steps per second, set-up seconds) or date a set (``created``) left
out: they differ between any two runs. The stage keys themselves are pinned by
``tests/test_stage_keys.py``.

    .venv/bin/python benchmarks/stage_bytes.py --against REV [--cases NAME ...] [--json FILE]
        [--keep FOLDER]

It exits 1 when a file differs or is in one cache only. Under 10 minutes a tree on 2 CPU
cores for the four cases.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mdd.machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "minimax": [],
    "dit+mode+kcenter": ["method=dit", "sample.guidance.kind=mode", "selection.kind=kcenter"],
    "herding decoded": ["method=herding", "sample.through_autoencoder=true"],
    "minimax in 2 phases": ["data.phases=2"],
}
# What times a stage or dates a file rather than says what it made.
TIMING_SUFFIXES = ("wall_s", "_per_s", "setup_s", "created")
RUN = "import sys; from mdd.cli import run_main; sys.exit(run_main(sys.argv[1:]))"


def _untimed(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: _untimed(item) for key, item in value.items() if not key.endswith(TIMING_SUFFIXES)
        }
    if isinstance(value, list):
        return [_untimed(item) for item in value]
    return value


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, or of a JSON file's content without its timings."""
    data = path.read_bytes()
    if path.suffix == ".json":
        data = json.dumps(_untimed(json.loads(data)), sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


def cache_digests(cache: Path) -> dict[str, str]:
    """Every file of a cache folder (locks aside) by its path inside it."""
    return {
        str(path.relative_to(cache)): file_digest(path)
        for path in sorted(cache.rglob("*"))
        if path.is_file() and path.suffix != ".lock"
    }


def run_cases(tree: Path, work: Path, cases: list[str], keep: Path) -> Path:
    """Every case through ``mdd-run`` with the mdd of ``tree``, its cache moved to ``keep``
    afterwards. Both trees run in the same folder ``work``: a set's manifest holds the hash
    of its whole config, where the cache folder and the tracking store are named."""
    cache = work / "cache"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    for case in cases:
        places = [
            f"cache_dir={cache}",
            f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
            f"tracking.artifact_root={work / 'artifacts'}",
        ]
        sets = [arg for item in [*places, *CASES[case]] for arg in ("--set", item)]
        command = [sys.executable, "-c", RUN, "experiments/smoke.yaml", *sets]
        print(f"{tree.name}: {case}", flush=True)
        subprocess.run(command, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    work.rename(keep)
    return keep / "cache"


def compare(here: dict[str, str], there: dict[str, str]) -> dict[str, list[str]]:
    return {
        "differ": sorted(p for p in here.keys() & there.keys() if here[p] != there[p]),
        "only_here": sorted(here.keys() - there.keys()),
        "only_there": sorted(there.keys() - here.keys()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the commit to compare with")
    parser.add_argument("--cases", nargs="*", choices=list(CASES), default=list(CASES))
    parser.add_argument("--json", type=Path, help="write the comparison here")
    parser.add_argument("--keep", type=Path, help="a new folder to run in and keep, to look")
    args = parser.parse_args(argv)
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep {args.keep}: the folder exists; name a new one")
    with tempfile.TemporaryDirectory(prefix="stage-bytes-") as scratch:
        work = Path(scratch) if args.keep is None else args.keep.resolve()
        work.mkdir(parents=True, exist_ok=True)
        other = work / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(other), args.against],
            cwd=ROOT,
            check=True,
        )
        try:
            here = cache_digests(run_cases(ROOT, work / "run", args.cases, work / "here"))
            there = cache_digests(run_cases(other, work / "run", args.cases, work / "there"))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT)
    found = compare(here, there)
    same = len(here.keys() & there.keys()) - len(found["differ"])
    cases = ", ".join(args.cases)
    print(f"on {cpu_model()} ({os.cpu_count()} cores); cases: {cases}; against {args.against}")
    counts = {kind: len(paths) for kind, paths in found.items()}
    print(f"{same} files the same, {counts['differ']} differ, {counts['only_here']} only "
          f"here, {counts['only_there']} only there")  # fmt: skip
    for kind, paths in found.items():
        for path in paths:
            print(f"  {kind}: {path}")
    if args.json:
        args.json.write_text(json.dumps({"against": args.against, **found}, indent=2))
    return 1 if any(found.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
