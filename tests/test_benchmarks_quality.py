"""benchmarks/quality_fmnist.py keeps working: ``--quick`` runs every (method, IPC) cell through
the real pipeline on a tiny Fashion-MNIST stand-in, and ``mdd report`` on the same MLflow store
shows the same accuracies. The accuracies themselves are not judged here: tiny sizes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from mdd.grid import PLUGINS, load_results, render_sets
from mdd.results import read_result, read_sets
from mdd.sweep import best_params
from mdd.tracking import git_state
from tests.conftest import write_tiny_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "quality_fmnist.py"

COLUMNS = ["random", "herding", "kcenter", "dit", "minimax", "minimax-swept", "full", *PLUGINS]
EXPERIMENT = "quality_fmnist_quick"
CELL = re.compile(r"^(?P<accuracy>\d+\.\d\d ± \d+\.\d\d) \((?P<wall_s>\d+\.\d) s\)$")
SWEPT = {"finetune.lambda_r": 0.03, "finetune.lambda_d": 0.05}  # the best trial below


def markdown_table(text: str, first_header: str) -> dict[str, dict[str, str]]:
    """The first table whose header starts with ``first_header``: row label -> column -> cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def write_study(url: str) -> None:
    """A study of sweeps/smoke.yaml (the sweep --quick reads) with two complete trials."""
    study = optuna.create_study(study_name="smoke-ipc2", storage=url, direction="maximize")
    weight = optuna.distributions.FloatDistribution(1e-4, 0.1, log=True)
    distributions = {"finetune.lambda_r": weight, "finetune.lambda_d": weight}
    worse = {"finetune.lambda_r": 0.001, "finetune.lambda_d": 0.002}
    for value, params in ((40.0, worse), (55.0, SWEPT)):
        trial = optuna.trial.create_trial(params=params, distributions=distributions, value=value)
        study.add_trial(trial)


def run_script(work: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), "--quick", *extra]
    for override in (
        f"data.root={work / 'data'}",
        f"cache_dir={work / 'cache'}",
        f"tracking.artifact_root={work / 'artifacts'}",
        "device=cpu",
    ):
        command += ["--set", override]
    # cwd: anything left at its default (runs/...) lands in the temporary folder. The deadline
    # is for a loaded machine (CI may share the cores); alone the run takes about 3 min.
    return subprocess.run(
        command, cwd=work, env=env, capture_output=True, text=True, timeout=1200, check=False
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("quality")
    write_tiny_fashion_mnist(work / "data", train_per_class=40, test_per_class=10)
    storage = f"sqlite:///{work / 'optuna.db'}"
    write_study(storage)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    results = ["--results", str(work / "results")]
    done = run_script(work, env, "--storage", storage, "--out", str(work / "out"), *results)
    assert done.returncode == 0, done.stderr[-3000:]
    report = subprocess.run(
        [sys.executable, "-m", "mdd", "report", "--experiment", EXPERIMENT],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    return {
        "work": work,
        "env": env,
        "stdout": done.stdout,
        "report": report.stdout,
        "results": json.loads((work / "out" / "results.json").read_text()),
    }


def test_quick_table_has_a_row_per_ipc_and_a_column_per_method_of_numbers(quick_run):
    table = markdown_table(quick_run["stdout"], "IPC")
    assert list(table) == ["1", "2"]
    for ipc, row in table.items():
        assert list(row) == ["IPC", *COLUMNS]
        for column in COLUMNS:
            found = CELL.match(row[column])
            assert found, f"IPC {ipc}, {column}: {row[column]!r}"
            mean, std = (float(part) for part in found["accuracy"].split(" ± "))
            assert 0 <= mean <= 100 and std >= 0
            assert float(found["wall_s"]) >= 0
    assert (quick_run["work"] / "out" / "table.md").read_text() in quick_run["stdout"]


def test_table_cells_are_the_recorded_metrics_of_each_cell(quick_run):
    table = markdown_table(quick_run["stdout"], "IPC")
    cells = quick_run["results"]["cells"]
    assert len(cells) == 2 * len(COLUMNS)
    for cell in cells:
        assert cell["status"] == "done"
        assert (cell["repeats"], cell["eval_epochs"]) == (1, 2)  # --quick: 1 network, 2 epochs
        text = f"{cell['last_acc_mean']:.2f} ± {cell['last_acc_std']:.2f}"
        assert table[str(cell["ipc"])][cell["column"]].startswith(text)
    # One fine-tuning per weight setting serves both IPCs: IPC is not part of its key (nor the
    # judge's, which the first cell trained).
    at_ipc2 = {cell["column"]: cell for cell in cells if cell["ipc"] == 2}
    for column in ("dit", "minimax", "minimax-swept"):
        assert at_ipc2[column]["cached_stages"] == ["pretrain", "judge", "finetune"]
    # A plug-in on a fine-tune reuses that fine-tune: dit+mode comes after dit.
    assert at_ipc2["dit+mode"]["cached_stages"] == ["pretrain", "judge", "finetune"]


def test_swept_cell_takes_the_weights_of_the_studys_best_trial(quick_run):
    weights = quick_run["results"]["weights"]
    assert weights["minimax"]["lambdas"] == [0.002, 0.008]
    assert weights["minimax-swept"]["lambdas"] == [0.03, 0.05]
    assert "best trial (#1, objective 55) of study smoke-ipc2" in quick_run["stdout"]
    client = MlflowClient(tracking_uri=quick_run["env"]["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs(
        [experiment.experiment_id], f"attributes.run_name = '{EXPERIMENT}-minimax-swept-ipc1'"
    )
    assert len(runs) == 1
    assert runs[0].data.params["finetune.lambda_r"] == "0.03"
    assert runs[0].data.params["finetune.lambda_d"] == "0.05"
    assert runs[0].data.tags["mdd.variant"] == "swept"


def test_mdd_report_shows_the_same_methods_and_accuracies(quick_run):
    table = markdown_table(quick_run["stdout"], "IPC")
    pivot = markdown_table(quick_run["report"].split("## fashion_mnist, dc protocol")[1], "IPC")
    assert list(pivot) == ["1", "2"]
    for ipc, row in pivot.items():
        # The report orders a composition after its fine-tune (dit, dit+mode, ...).
        assert sorted(row) == sorted(["IPC", "network", *COLUMNS])
        for column in COLUMNS:
            assert table[ipc][column].startswith(row[column].strip("*") + " (")


def test_swept_column_without_a_study_or_weights_is_skipped_and_says_why(quick_run):
    missing = f"sqlite:///{quick_run['work'] / 'no-such-optuna.db'}"
    done = run_script(
        quick_run["work"],
        quick_run["env"],
        *("--methods", "minimax-swept", "--ipc", "1", "--storage", missing),
        *("--experiment", "quality_skipped"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert markdown_table(done.stdout, "IPC")["1"]["minimax-swept"] == "skipped"
    assert "minimax-swept: skipped: sweep sweeps/smoke.yaml has no complete trial" in done.stdout
    assert not (quick_run["work"] / "no-such-optuna.db").exists()


def test_best_params_reads_the_best_trial_and_is_none_for_an_unknown_study(tmp_path: Path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    write_study(storage)
    best = best_params(ROOT / "sweeps" / "smoke.yaml", storage=storage)
    assert (best.study, best.number, best.values, best.params) == ("smoke-ipc2", 1, [55.0], SWEPT)
    assert best_params(ROOT / "sweeps" / "fashion_mnist.yaml", storage=storage) is None


def test_cached_only_tabulates_earlier_cells_and_computes_nothing(quick_run):
    # IPC 1 and 2 were computed by the quick run; IPC 3 never was.
    out = quick_run["work"] / "cached"
    evaluations = quick_run["work"] / "cache" / "eval"
    computed = set(evaluations.glob("*/done.json"))
    done = run_script(
        quick_run["work"],
        quick_run["env"],
        *("--cached-only", "--ipc", "1", "2", "3", "--methods", "random", "minimax"),
        *("--best-weights", "0.03", "0.05", "--out", str(out)),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cells = {
        (c["column"], c["ipc"]): c for c in json.loads((out / "results.json").read_text())["cells"]
    }
    before = {(c["column"], c["ipc"]): c for c in quick_run["results"]["cells"]}
    for column in ("random", "minimax"):
        for ipc in (1, 2):
            assert cells[(column, ipc)]["status"] == "done"
            assert cells[(column, ipc)]["last_acc_mean"] == before[(column, ipc)]["last_acc_mean"]
        assert cells[(column, 3)]["status"] == "not run"
    assert "not run: random at IPC 3, minimax at IPC 3" in done.stdout
    assert set(evaluations.glob("*/done.json")) == computed  # nothing new was evaluated


def test_each_finished_cell_leaves_a_result_file_with_what_ran_came_out_and_where(quick_run):
    records = {(r["column"], r["ipc"]): r for r in load_results(quick_run["work"] / "results")}
    assert sorted(records) == sorted((c, ipc) for c in COLUMNS for ipc in (1, 2))
    cells = {(c["column"], c["ipc"]): c for c in quick_run["results"]["cells"]}
    for key, record in records.items():
        assert record["last_acc_mean"] == cells[key]["last_acc_mean"]
        assert len(record["last_acc"]) == len(record["best_acc"]) == record["repeats"] == 1
        assert record["last_acc"][0] == pytest.approx(record["last_acc_mean"])
        assert (record["protocol"], record["network"], record["epochs"]) == ("dc", "convnet3", 2)
        assert set(record["diagnostics"]) >= {"class_consistency", "recall", "frechet_features"}
        assert record["machine"]["cpu"] and record["machine"]["cores"] >= 1
        assert record["machine"]["torch"].startswith("2.")
        assert len(record["git_commit"]) == 40 and len(record["config_hash"]) == 16
        assert record["git_dirty"] in ("true", "false")
        assert record["eval_wall_s"] > 0
    assert records[("minimax-swept", 1)]["lambda_r"] == 0.03
    assert records[("dit", 1)]["method"] == "dit"
    assert records[("dit", 1)]["sampler"] == {
        "steps": 5,
        "scheduler": "ddpm",
        "guidance_scale": 2.0,
        "start": None,  # from pure noise
    }
    assert records[("dit", 1)]["base"] is None  # the smoke experiment pretrains its own
    assert records[("random", 1)]["sampler"] is None  # real images: no sampler
    moded = records[("minimax+mode", 1)]
    assert (moded["method"], moded["composition"], moded["lambda_r"]) == (
        "minimax",
        "minimax+mode",
        0.002,
    )
    assert moded["guidance"]["kind"] == "mode" and moded["selection"] is None
    assert records[("dit+confidence", 1)]["selection"]["kind"] == "confidence"


def rerun_cells(quick_run: dict, out: Path, *extra: str) -> tuple[str, dict[str, dict]]:
    """Run the script again on the quick run's data and cache; its stdout and cells by column."""
    done = run_script(quick_run["work"], quick_run["env"], *extra, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    cells = json.loads((out / "results.json").read_text())["cells"]
    return done.stdout, {cell["column"]: cell for cell in cells}


def test_a_cell_with_a_matching_result_file_is_read_back_and_a_stale_one_recomputed(
    quick_run, tmp_path: Path
):
    results = tmp_path / "results"
    shutil.copytree(quick_run["work"] / "results", results)
    stale = results / "random-ipc1.json"
    stale.write_text(stale.read_text().replace('"config_hash": "', '"config_hash": "stale'))
    _, cells = rerun_cells(
        quick_run,
        tmp_path / "out",
        *("--methods", "random", "minimax", "--ipc", "1", "--results", str(results)),
        *("--experiment", "quality_resumed"),
    )
    assert cells["minimax"]["status"] == "resumed"  # its file matched: nothing recomputed
    assert cells["random"]["status"] == "done"  # its file's hash did not: recomputed
    assert "stale" not in stale.read_text()
    client = MlflowClient(tracking_uri=quick_run["env"]["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("quality_resumed")
    names = {run.info.run_name for run in client.search_runs([experiment.experiment_id])}
    assert "quality_resumed-random-ipc1" in names
    assert "quality_resumed-minimax-ipc1" not in names


def test_pool_diagnostics_read_a_cells_candidate_pool_and_kept_set_from_the_cache(quick_run):
    work = quick_run["work"]
    command = [sys.executable, str(SCRIPT.parent / "pool_diagnostics.py"), "--quick"]
    command += ["--ipc", "2", "--methods", "dit+confidence", "dit"]
    for override in (f"data.root={work / 'data'}", f"cache_dir={work / 'cache'}", "device=cpu"):
        command += ["--set", override]
    found = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=600)
    # dit has no selection, hence no pool: a clear message and a non-zero exit.
    assert found.returncode == 1
    assert "dit: no selection, so no candidate pool to diagnose" in found.stderr
    command.remove("dit")
    found = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=600)
    assert found.returncode == 0, found.stderr[-3000:]
    table = markdown_table(found.stdout, "set")
    # The quick confidence cell keeps IPC 2 of 4 x 2 candidates for each of 10 classes.
    assert table["dit+confidence pool"]["images"] == "80"
    assert table["dit+confidence kept"]["images"] == "20"
    record = read_result(work / "results" / "dit+confidence-ipc2.json")
    kept = float(table["dit+confidence kept"]["frechet_features"])
    assert kept == pytest.approx(record["diagnostics"]["frechet_features"], abs=1e-3)


def test_a_copy_without_git_takes_its_commit_from_the_environment(tmp_path, monkeypatch):
    # Result files name their commit through mdd.tracking.git_state, the runs' provenance.
    monkeypatch.setenv("MDD_GIT_COMMIT", "fe84fb14592948e91da3a93bcc84c74bd4b7dc9c")
    commit = git_state(tmp_path)["mdd.git_commit"]  # a copy with no .git above it
    assert commit == "fe84fb14592948e91da3a93bcc84c74bd4b7dc9c"
    monkeypatch.delenv("MDD_GIT_COMMIT")
    assert git_state(tmp_path)["mdd.git_commit"] == "unknown"
    monkeypatch.setenv("MDD_GIT_COMMIT", "not this")  # a checkout: git wins over the variable
    assert re.fullmatch(r"[0-9a-f]{40}", git_state(ROOT)["mdd.git_commit"])


def test_set_seeds_draw_further_sets_of_the_seeded_columns_only(quick_run, tmp_path: Path):
    results = tmp_path / "results"
    shutil.copytree(quick_run["work"] / "results", results)
    stdout, cells = rerun_cells(
        quick_run,
        tmp_path / "out",
        *("--methods", "random", "dit", "herding", "--ipc", "1", "--set-seeds", "3"),
        *("--results", str(results), "--experiment", "quality_sets"),
    )
    assert cells["random"]["status"] == "resumed"  # set 0 is the cell's own file
    assert len(cells["random"]["set_accs"]) == len(cells["dit"]["set_accs"]) == 3
    assert cells["herding"]["set_accs"] == [cells["herding"]["last_acc_mean"]]  # one set
    assert "over 3 sets" in markdown_table(stdout, "IPC")["1"]["dit"]
    sets = read_sets(results)
    assert sorted(sets) == [("dit", 1), ("random", 1)]
    for records in sets.values():
        assert [r["set_seed"] for r in records] == [0, 1, 2]
        # The seed reached the sets: each set's images measure differently.
        assert len({r["diagnostics"]["frechet_features"] for r in records}) == 3
    rendered = render_sets(results)
    assert "| 1 | dit | 3 |" in rendered and "| 1 | random | 3 |" in rendered


def test_a_weight_set_on_the_command_line_is_the_weight_the_result_file_records(
    quick_run, tmp_path: Path
):
    results = tmp_path / "results"
    _, cells = rerun_cells(
        quick_run,
        tmp_path / "out",
        *("--methods", "minimax", "--ipc", "1", "--set", "finetune.lambda_r=0.02"),
        *("--results", str(results), "--experiment", "quality_weights"),
    )
    assert cells["minimax"]["status"] == "done"
    record = read_result(results / "minimax-ipc1.json")
    assert (record["lambda_r"], record["lambda_d"]) == (0.02, 0.008)
