"""Command lines: argument parsing and error reporting, nothing else.

``mdd-run`` and ``mdd-sweep`` are the two main entry points; ``mdd`` holds the
smaller tools as subcommands (``mdd data``, ``mdd ui``, ``mdd pretrain``,
``mdd consistency``, ``mdd report``). Errors a user can cause arrive here as
``MddError`` and are printed as one message with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from mdd.errors import MddError


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML file, e.g. experiments/fashion_mnist.yaml")
    add_set_argument(parser)


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """``--set SECTION.KEY=VALUE`` (repeatable), the one way every mdd command takes overrides."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config field (repeatable), e.g. --set sample.ipc=50",
    )


REDELIVER_AFTER_S = 0.05  # a swallowed SIGTERM is sent again this much later


def stop_on_sigterm() -> None:
    """Make SIGTERM (``kill``, ``docker stop``, a scheduler's time limit) unwind like Ctrl-C.

    The tracker then closes every open MLflow run as KILLED, with the reason as a tag,
    instead of leaving it RUNNING forever. Sweeps keep the default: a worker that stops is
    found by its missing heartbeat, and its trial is retried by another worker.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise StoppedBySignal(signum)

    # Python swallows an exception raised inside a weakref or __del__ callback (torch.compile
    # runs many), so a signal landing there would be lost: send it again from a thread a
    # moment later (from here it would be raised inside this hook and swallowed too).
    previous = sys.unraisablehook

    def redeliver(unraisable: sys.UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, StoppedBySignal):
            again = (os.getpid(), unraisable.exc_value.signum)
            timer = threading.Timer(REDELIVER_AFTER_S, os.kill, again)
            timer.daemon = True
            timer.start()
            return
        previous(unraisable)

    sys.unraisablehook = redeliver
    signal.signal(signal.SIGTERM, interrupt)


class StoppedBySignal(KeyboardInterrupt):
    """SIGTERM, unwinding like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.signum = signum


def _guarded(body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    if body is not _cmd_sweep:
        stop_on_sigterm()
    try:
        return body(args)
    except MddError as exc:
        print(f"mdd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mdd: interrupted", file=sys.stderr)
        return 130


def _cmd_data(args: argparse.Namespace) -> int:
    from mdd.config import load_config
    from mdd.data import load_dataset

    config = load_config(args.config, args.overrides)
    splits = load_dataset(config.data)
    print(splits.summary())
    return 0


def _ui_tracking(path: str | None, experiment: str | None):
    """The tracking settings of an experiment file or of a sweep file (as its workers use)."""
    import yaml

    from mdd.config import TrackingConfig, load_config

    if path is None:
        tracking = TrackingConfig()
    elif isinstance(data := yaml.safe_load(Path(path).read_text()), dict) and "space" in data:
        from mdd.sweep.config import load_sweep, trial_config

        sweep, base = load_sweep(path)
        tracking = sweep.tracking or trial_config(base, sweep, {}, sweep.ipc[0]).tracking
    else:
        tracking = load_config(path).tracking
    return tracking.model_copy(update={"experiment": experiment}) if experiment else tracking


def _cmd_ui(args: argparse.Namespace) -> int:
    from mdd.tracking import experiment_id, finished_runs, redact, tracking_uri
    from mdd.ui import links

    tracking = _ui_tracking(args.config, args.experiment)
    uri = tracking_uri(tracking)
    base = f"http://{args.host}:{args.port}"
    print(f"MLflow UI for {redact(uri)} on {base}", flush=True)
    found = experiment_id(tracking)
    if found is None:
        print(f"experiment '{tracking.experiment}' has no runs yet", flush=True)
    else:
        for line in links(base, found, finished_runs(tracking)):
            print(line, flush=True)
    # The mlflow beside this interpreter (the venv's); loopback unless asked otherwise,
    # since the UI has no authentication.
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    command = [mlflow, "ui", "--backend-store-uri", uri, "--host", args.host]
    command += ["--port", str(args.port)]
    return subprocess.call(command)


def _cmd_run(args: argparse.Namespace) -> int:
    from mdd.config import load_config

    # Validate before importing torch and friends: a bad file fails in a blink.
    config = load_config(args.config, args.overrides)
    from mdd.pipeline.experiment import run_experiment

    return run_experiment(config, config_path=args.config, dry_run=args.dry_run, phase=args.phase)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from mdd.config import load_config
    from mdd.pipeline.standalone import pretrain_only

    config = load_config(args.config, args.overrides)
    pretrain_only(config, export=args.export)
    return 0


def _cmd_judge(args: argparse.Namespace) -> int:
    from mdd.config import load_config
    from mdd.pipeline.standalone import judge_only

    config = load_config(args.config, args.overrides)
    judge_only(config, export=args.export, config_path=args.config)
    return 0


def _cmd_consistency(args: argparse.Namespace) -> int:
    from mdd.config import load_config
    from mdd.pipeline.standalone import measure_consistency

    config = load_config(args.config, args.overrides)
    measure_consistency(config, per_class=args.per_class)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from mdd.config import TrackingConfig
    from mdd.report import write_report, write_results_report

    if args.results is not None:
        print(write_results_report(args.results, args.out))
        return 0
    tracking = TrackingConfig(experiment=args.experiment)
    print(write_report(tracking, args.out))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from mdd.sweep import run_sweep

    return run_sweep(args)


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdd-run",
        description="One reproduction run: pretrain if needed, fine-tune, sample, evaluate; "
        "every stage logged to MLflow.",
    )
    _add_config_args(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="print the stage plan and what is cached"
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="processes on this machine (torchrun): the fine-tune and the sampling split "
        "over them, one GPU each where there are GPUs",
    )
    parser.add_argument(
        "--phase",
        type=int,
        default=None,
        metavar="I",
        help="with data.phases: fine-tune and sample class phase I alone (an array task); "
        "a run without --phase merges the phases and evaluates",
    )
    return parser


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """``mdd-run ARGS --nproc N`` as the torchrun command that starts its N processes."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, f"--nproc_per_node={nproc}", "-m", "mdd.run", *rest]


def _sweep_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdd-sweep",
        description="An Optuna study over the minimax weights, memory size and IPC; "
        "every trial is an MLflow run.",
    )
    parser.add_argument("sweep", help="sweep YAML file, e.g. sweeps/fashion_mnist.yaml")
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite under runs/)")
    parser.add_argument("--n-trials", type=int, help="total trials across all workers")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes")
    return parser


def _mdd_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdd", description="mdd tools")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="where the data is, split sizes and fingerprint")
    _add_config_args(data)
    data.set_defaults(body=_cmd_data)

    ui = sub.add_parser("ui", help="start the MLflow UI on the same store")
    ui.add_argument(
        "config", nargs="?", help="experiment or sweep YAML (for its tracking settings)"
    )
    ui.add_argument("--experiment", help="MLflow experiment to link (default: the config's)")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(body=_cmd_ui)

    pretrain = sub.add_parser("pretrain", help="pretrain the base model of a config")
    _add_config_args(pretrain)
    pretrain.add_argument("--export", help="also copy the base model into this folder")
    pretrain.set_defaults(body=_cmd_pretrain)

    judge = sub.add_parser("judge", help="train (or read) the dataset's judge, test it")
    _add_config_args(judge)
    judge.add_argument("--export", help="also copy its weights into this folder")
    judge.set_defaults(body=_cmd_judge)

    consistency = sub.add_parser(
        "consistency", help="class consistency of the base model, judged by a ConvNet-3"
    )
    _add_config_args(consistency)
    consistency.add_argument("--per-class", type=int, default=100)
    consistency.set_defaults(body=_cmd_consistency)

    report = sub.add_parser("report", help="paper-style results table from the MLflow store")
    source = report.add_mutually_exclusive_group()
    source.add_argument("--experiment", default="mdd", help="MLflow experiment (default mdd)")
    source.add_argument(
        "--results",
        metavar="FOLDER",
        help="read a quality benchmark's result files instead (benchmarks/results/<dataset>)",
    )
    report.add_argument("--out", default="runs/report", help="folder for report.md and .csv")
    report.set_defaults(body=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _mdd_parser().parse_args(argv)
    return _guarded(args.body, args)


def run_main(argv: Sequence[str] | None = None) -> int:
    args = _run_parser().parse_args(argv)
    if args.nproc < 1:
        print("mdd-run: error: --nproc must be at least 1", file=sys.stderr)
        return 2
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        command = torchrun_command(args.nproc, sys.argv[1:] if argv is None else list(argv))
        return subprocess.run(command).returncode
    return _guarded(_cmd_run, args)


def sweep_main(argv: Sequence[str] | None = None) -> int:
    return _guarded(_cmd_sweep, _sweep_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
