"""Every stage's cache key for a spread of smoke and embedded-default configs, pinned.

A refactor that moves a setting or renames a section must leave each key as it was, or a
cached stage would be recomputed (or, worse, a stale one read back). When a change means
to alter keys, it says so in its commit and rewrites the file:

    .venv/bin/python tests/test_stage_keys.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PINNED = Path(__file__).with_name("stage_keys.json")
FINGERPRINT = "376864d5061e4085"  # Fashion-MNIST's; the keys need no data loaded
CASES = {
    "smoke minimax": ("smoke", []),
    "smoke dit+mode+kcenter": ("smoke", ["method=dit", "sample.guidance.kind=mode",
                                         "selection.kind=kcenter"]),
    "smoke base+influence": ("smoke", ["method=base", "sample.guidance.kind=influence"]),
    "smoke herding": ("smoke", ["method=herding"]),
    "smoke random seed 3": ("smoke", ["method=random", "sample.seed=3"]),
    "smoke herding decoded": ("smoke", ["method=herding", "sample.through_autoencoder=true"]),
    "smoke minimax in 2 phases": ("smoke", ["data.phases=2"]),
    "smoke dit+prototypes": ("smoke", ["method=dit", "sample.start.strength=0.5"]),
    "default minimax": ("fashion_mnist", []),
    "default dit+real-herding": ("fashion_mnist", ["method=dit", "selection.kind=real-herding",
                                                   "selection.oversample=8"]),
    "default full": ("fashion_mnist", ["method=full"]),
    "default minimax no diagnostics": ("fashion_mnist", ["judge.diagnostics=false"]),
}  # fmt: skip


def stage_keys() -> dict[str, list[list[str]]]:
    """Each case's planned stages as [name, key], in the plan's order."""
    from mdd.config import load_config
    from mdd.pipeline.plan import plan

    keys = {}
    for case, (experiment, overrides) in CASES.items():
        config = load_config(ROOT / "experiments" / f"{experiment}.yaml", overrides)
        keys[case] = [[stage.name, stage.key] for stage in plan(config, FINGERPRINT)]
    return keys


@pytest.mark.parametrize("case", list(CASES))
def test_each_stage_keeps_its_pinned_key(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the experiments name the shipped base relative to the checkout
    pinned = json.loads(PINNED.read_text())
    assert stage_keys()[case] == pinned[case], (
        f"{case}: a stage key changed. If that is meant, rerun "
        "`.venv/bin/python tests/test_stage_keys.py --write` and say why in the commit."
    )


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: tests/test_stage_keys.py --write")
    sys.path.insert(0, str(ROOT))
    PINNED.write_text(json.dumps(stage_keys(), indent=1) + "\n")
    print(f"wrote {PINNED}")
