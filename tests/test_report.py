"""mdd report: the results table read back from runs written to a real sqlite MLflow store."""

from __future__ import annotations

import csv
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import pytest
from mlflow import MlflowClient

from mdd.cli import main
from mdd.config import Config, TrackingConfig
from mdd.errors import MddError
from mdd.report import collect_rows, write_report
from mdd.tracking import Tracker

# (method, ipc, network) -> (last mean, last std, best mean, best std) of the runs to report.
REPORTED = {
    ("random", 1, "convnet3"): (51.23, 1.04, 53.81, 0.92),
    ("random", 10, "convnet3"): (74.62, 0.48, 75.17, 0.33),
    ("minimax", 1, "convnet3"): (70.41, 0.77, 71.96, 0.58),
    ("minimax", 10, "convnet3"): (84.62, 0.31, 85.08, 0.27),
    ("minimax", 10, "resnet_ap10"): (82.14, 0.66, 83.57, 0.41),
}


def _config(method: str, ipc: int, networks: list[str], protocol: str = "dc") -> Config:
    config = Config(method=method, name=f"{method}-ipc{ipc}")
    config.sample.ipc = ipc
    config.eval.protocol = protocol
    config.eval.networks = networks
    return config


def _metrics(network: str, values: tuple[float, ...], split: str = "test") -> dict[str, float]:
    names = ("last_acc_mean", "last_acc_std", "best_acc_mean", "best_acc_std")
    return {f"{split}/{network}/{name}": value for name, value in zip(names, values, strict=True)}


def _log_run(tracker: Tracker, config: Config, metrics: dict[str, float], **tags: str) -> None:
    with tracker.run(config.name, tags={"mdd.method": config.method, **tags}) as run:
        run.log_params(config.to_dict())
        run.log_metrics(metrics)


class Written(NamedTuple):
    tracking: TrackingConfig
    unplaced_run_id: str


@pytest.fixture(scope="module")
def written(mlflow_store: str, tmp_path_factory: pytest.TempPathFactory) -> Written:
    """Six reported cells plus every kind of run the report must leave out or supersede."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    tracking = TrackingConfig(
        uri=mlflow_store, experiment=f"report-{uuid.uuid4().hex[:8]}", artifact_root=artifacts
    )
    tracker = Tracker(tracking)
    # An older minimax IPC 10 run that the newer one below supersedes (runs = 2).
    _log_run(tracker, _config("minimax", 10, ["convnet3"]), _metrics("convnet3", (80, 1, 81, 1)))
    time.sleep(0.01)  # start times are in ms: keep "newest" unambiguous
    for method, ipc in (("random", 1), ("random", 10), ("minimax", 1), ("minimax", 10)):
        networks = [net for (m, i, net) in REPORTED if (m, i) == (method, ipc)]
        metrics: dict[str, float] = {}
        for network in networks:
            metrics |= _metrics(network, REPORTED[(method, ipc, network)])
        _log_run(tracker, _config(method, ipc, networks), metrics)

    # A parent with a nested evaluate stage carrying its own test metrics: the child is ignored,
    # and the parent (no metrics of its own) contributes nothing.
    herding = _config("herding", 1, ["convnet3"])
    with tracker.run(herding.name, tags={"mdd.method": "herding"}) as parent:
        parent.log_params(herding.to_dict())
        with tracker.run("evaluate", parent=parent) as child:
            child.log_params(herding.to_dict())
            child.log_metrics(_metrics("convnet3", (60, 1, 61, 1)))
    # A failed run with test metrics.
    failed = _config("kcenter", 1, ["convnet3"])
    with pytest.raises(RuntimeError), tracker.run(failed.name) as run:
        run.log_params(failed.to_dict())
        run.log_metrics(_metrics("convnet3", (55, 1, 56, 1)))
        raise RuntimeError("evaluation crashed")
    # A proxy run: validation metrics only.
    proxy = _config("dit", 1, ["convnet3"], protocol="proxy")
    _log_run(tracker, proxy, _metrics("convnet3", (65, 1, 66, 1), split="val"))
    # A sweep as mdd.sweep writes it: trials and final reruns nested in the study's run.
    # Trials are left out; a final rerun is a result; the study's own "final/..." copies are not.
    tuned = _config("dit", 10, ["convnet3"])
    final = _metrics("convnet3", (81.37, 0.52, 82.09, 0.44))
    with tracker.run("study", tags={"mdd.sweep": "s1"}) as study:
        study.log_params({"sample.ipc": 10})
        with tracker.run("trial-0", tags={"mdd.sweep": "s1"}, parent=study) as trial:
            trial.log_params(tuned.to_dict())
            trial.log_metrics(_metrics("convnet3", (79, 1, 80, 1)))
        with tracker.run(
            "final-ipc10", tags={"mdd.sweep": "s1", "mdd.final": "true"}, parent=study
        ) as rerun:
            rerun.log_params(tuned.to_dict())
            rerun.log_metrics(final)
        # A final rerun without the config as params cannot be placed in the table.
        with tracker.run(
            "final-bare", tags={"mdd.sweep": "s1", "mdd.final": "true"}, parent=study
        ) as bare:
            bare.log_params({"eval.protocol": "dc"})
            bare.log_metrics(_metrics("convnet3", (77, 1, 78, 1)))
        study.log_metrics({f"final/{name}": value for name, value in final.items()})
    # A sweep trial written as a top-level run is still a search step.
    _log_run(tracker, tuned, _metrics("convnet3", (78, 1, 79, 1)), **{"mdd.sweep": "s2"})
    return Written(tracking, bare.run_id)


EXPECTED_ROWS = [
    # dataset, method, IPC, network, protocol, last, best, repeats, runs
    ["fashion_mnist", "random", "1", "convnet3", "dc", "51.23 ± 1.04", "53.81 ± 0.92", "3", "1"],
    ["fashion_mnist", "minimax", "1", "convnet3", "dc", "70.41 ± 0.77", "71.96 ± 0.58", "3", "1"],
    ["fashion_mnist", "random", "10", "convnet3", "dc", "74.62 ± 0.48", "75.17 ± 0.33", "3", "1"],
    ["fashion_mnist", "dit", "10", "convnet3", "dc", "81.37 ± 0.52", "82.09 ± 0.44", "3", "1"],
    ["fashion_mnist", "minimax", "10", "convnet3", "dc", "84.62 ± 0.31", "85.08 ± 0.27", "3", "2¹"],
    [
        "fashion_mnist",
        "minimax",
        "10",
        "resnet_ap10",
        "dc",
        "82.14 ± 0.66",
        "83.57 ± 0.41",
        "3",
        "1",
    ],
]


def _markdown_rows(markdown: str, first_cell: str) -> list[list[str]]:
    rows = []
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            rows.append(cells)
    return rows


def test_table_has_one_row_per_cell_from_the_newest_run_or_sweep_final(
    written: Written, tmp_path: Path
) -> None:
    markdown = write_report(written.tracking, tmp_path / "report")

    assert _markdown_rows(markdown, "fashion_mnist") == EXPECTED_ROWS
    assert "herding" not in markdown and "kcenter" not in markdown  # nested and failed runs
    assert "¹ 1 of 6 rows had more than one finished run" in markdown
    assert (
        "Left out: 1 finished run(s) with test metrics but no `method` or `sample.ipc` param: "
        f"{written.unplaced_run_id}." in markdown
    )
    assert (tmp_path / "report" / "report.md").read_text(encoding="utf-8") == markdown


def test_legend_says_what_last_and_best_mean(written: Written, tmp_path: Path) -> None:
    markdown = write_report(written.tracking, tmp_path)

    header = _markdown_rows(markdown, "dataset")[0]
    assert header[5:7] == ["last acc (%)", "best acc (%)"]
    assert "**last** = accuracy after the last training epoch" in markdown
    assert "**best** = the best accuracy reached over training" in markdown


def test_pivot_has_ipc_by_network_rows_and_a_column_per_method(
    written: Written, tmp_path: Path
) -> None:
    markdown = write_report(written.tracking, tmp_path)
    pivot = markdown.split("## fashion_mnist, dc protocol: last accuracy (%)")[1]

    assert _markdown_rows(pivot, "IPC") == [["IPC", "network", "random", "dit", "minimax"]]
    assert _markdown_rows(pivot, "1") == [
        ["1", "convnet3", "51.23 ± 1.04", "—", "**70.41 ± 0.77**"]
    ]
    assert _markdown_rows(pivot, "10") == [
        ["10", "convnet3", "74.62 ± 0.48", "81.37 ± 0.52", "**84.62 ± 0.31**"],
        ["10", "resnet_ap10", "—", "—", "**82.14 ± 0.66**"],
    ]


def test_csv_holds_the_same_rows_with_plain_numbers(written: Written, tmp_path: Path) -> None:
    write_report(written.tracking, tmp_path)
    with (tmp_path / "report.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))

    assert [(r["method"], r["ipc"], r["network"]) for r in rows] == [
        (row[1], row[2], row[3]) for row in EXPECTED_ROWS
    ]
    minimax = rows[4]
    assert minimax["dataset"] == "fashion_mnist" and minimax["protocol"] == "dc"
    assert [float(minimax[k]) for k in ("last_acc_mean", "last_acc_std")] == [84.62, 0.31]
    assert [float(minimax[k]) for k in ("best_acc_mean", "best_acc_std")] == [85.08, 0.27]
    assert (minimax["repeats"], minimax["runs"]) == ("3", "2")
    client = MlflowClient(tracking_uri=written.tracking.uri)
    newest = client.get_run(minimax["run_id"])
    assert newest.data.metrics["test/convnet3/last_acc_mean"] == 84.62


def test_mdd_report_prints_the_table_and_writes_both_files(
    written: Written,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(written.tracking.uri))
    out = tmp_path / "out"

    assert main(["report", "--experiment", written.tracking.experiment, "--out", str(out)]) == 0

    printed = capsys.readouterr().out
    assert _markdown_rows(printed, "fashion_mnist") == EXPECTED_ROWS
    assert sorted(path.name for path in out.iterdir()) == ["report.csv", "report.md"]


def test_unknown_experiment_is_an_error_and_is_not_created(
    written: Written,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(written.tracking.uri))

    assert main(["report", "--experiment", "no-such-experiment", "--out", str(tmp_path)]) == 1

    error = capsys.readouterr().err
    assert "has no experiment named 'no-such-experiment'" in error
    assert written.tracking.experiment in error  # the hint lists what exists
    client = MlflowClient(tracking_uri=written.tracking.uri)
    assert client.get_experiment_by_name("no-such-experiment") is None
    assert list(tmp_path.iterdir()) == []


def test_experiment_without_reportable_runs_is_an_error(mlflow_store: str, tmp_path: Path) -> None:
    tracking = TrackingConfig(
        uri=mlflow_store, experiment=f"empty-{uuid.uuid4().hex[:8]}", artifact_root=tmp_path
    )
    tracker = Tracker(tracking)
    _log_run(tracker, _config("dit", 1, ["convnet3"], protocol="proxy"), {"val/x": 1.0})

    with pytest.raises(MddError, match="has no finished run to report"):
        write_report(tracking, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_report_shows_each_sets_diagnostics_beside_the_accuracies(
    tmp_path: Path, mlflow_store: str
) -> None:
    tracking = TrackingConfig(
        uri=mlflow_store, experiment=f"diag-{uuid.uuid4().hex[:8]}", artifact_root=tmp_path
    )
    tracker = Tracker(tracking)
    diagnostics = {"surrogate/intra_cosine_pixels": 0.812, "surrogate/precision": 0.75}
    for network in ("convnet3", "resnet_ap10"):
        metrics = _metrics(network, (70, 1, 71, 1)) | diagnostics
        _log_run(tracker, _config("minimax", 10, [network]), metrics)
    _log_run(tracker, _config("random", 10, ["convnet3"]), _metrics("convnet3", (74, 1, 75, 1)))
    markdown = write_report(tracking, tmp_path / "out")
    section = markdown.split("## Surrogate-set diagnostics", 1)[1]
    rows = _markdown_rows(section, "fashion_mnist")
    assert len(rows) == 1  # one line per set, not per network; random logged none
    cells = dict(zip(_markdown_rows(section, "dataset")[0], rows[0], strict=True))
    assert (cells["method"], cells["IPC"]) == ("minimax", "10")
    assert (cells["intra cos (pixels)"], cells["precision"], cells["recall"]) == (
        "0.812",
        "0.750",
        "—",
    )
    with (tmp_path / "out" / "report.csv").open() as handle:
        records = list(csv.DictReader(handle))
    assert {r["intra_cosine_pixels"] for r in records if r["method"] == "minimax"} == {"0.812"}


def test_compositions_are_columns_of_their_own_named_as_the_benchmark_names_them() -> None:
    def run(composition: str, **tags: str) -> dict:
        return {
            "run_id": composition,
            "parent_run_id": None,
            "start_time_ms": 0,
            "params": {"method": composition.split("+")[0], "composition": composition}
            | {"sample.ipc": "10", "data.dataset": "fashion_mnist", "eval.protocol": "dc"},
            "tags": tags,
            "metrics": _metrics("convnet3", (73.0, 0.2, 73.5, 0.1)),
        }

    runs = [run("minimax"), run("minimax+mode", **{"mdd.variant": "swept"}), run("dit+kcenter")]
    rows, unplaced = collect_rows(runs)
    assert not unplaced
    assert sorted(row.method for row in rows) == ["dit+kcenter", "minimax", "minimax-swept+mode"]
