"""``mdd-run``: one run of a config, on one process or as rank 0 of a torchrun world."""

from __future__ import annotations

from mdd.config import Config
from mdd.core import Core
from mdd.distributed import join_world, leave_world
from mdd.errors import MddError
from mdd.pipeline.execute import RunResult, run_with_core
from mdd.pipeline.follow import follow
from mdd.pipeline.plan import format_plan, plan
from mdd.tracking import Tracker


def format_summary(result: RunResult) -> str:
    lines = [f"{'stage':<16} {'cached':<7} {'wall s':>8}"]
    for name, info in result.stages.items():
        lines.append(f"{name:<16} {str(info['cached']):<7} {info['wall_s']:>8.1f}")
    for name, value in sorted(result.metrics.items()):
        lines.append(f"{name:<32} {value:.4f}")
    return "\n".join(lines)


def run_experiment(
    config: Config, config_path: str, dry_run: bool = False, phase: int | None = None
) -> int:
    """``mdd-run``: one parent MLflow run with a nested run per stage.

    Under torchrun, rank 0 runs it and the other ranks follow (``mdd.pipeline.follow``) until rank 0
    ends the run, whether it finished or failed. ``phase`` runs one class phase's stages.
    """
    phases = config.data.phases
    if phase is not None and not (phases > 1 and 0 <= phase < phases):
        raise MddError(
            f"--phase {phase}: the config has data.phases {phases}; --phase names one of "
            "the phases 0 to data.phases - 1. Hint: set data.phases, or leave --phase out."
        )
    world = join_world()
    try:
        core = Core.load(config.data, config.device, world)
        if not world.main:
            follow(core, config)
            return 0
        try:
            print(format_plan(plan(config, core.data.fingerprint)))
            if dry_run:
                return 0
            tags = {"mdd.config_file": config_path}
            tracker = Tracker(config.tracking)
            result = run_with_core(core, config, tracker, tags, only_phase=phase)
        finally:
            world.broadcast(None)
        print(format_summary(result))
        return 0
    finally:
        leave_world()
