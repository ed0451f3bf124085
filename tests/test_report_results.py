"""mdd report --results: the results table read from a quality benchmark's result files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mdd.cli import main
from mdd.errors import DataError
from mdd.report import DIAGNOSTICS, write_results_report
from mdd.results import read_results, result_path, write_result

ROOT = Path(__file__).resolve().parents[1]


def cell_record(column: str, ipc: int, last: float, best: float) -> dict:
    return {
        "column": column,
        "ipc": ipc,
        "network": "convnet3",
        "protocol": "dc",
        "repeats": 3,
        "last_acc_mean": last,
        "last_acc_std": 0.25,
        "best_acc_mean": best,
        "best_acc_std": 0.5,
        "diagnostics": {"intra_cosine_features": 0.817, "recall": 0.83},
    }


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "fashion_mnist"
    for column, ipc, last, best in (
        ("dit+mode", 10, 74.29, 74.9),
        ("random", 10, 74.27, 74.5),
        ("dit", 1, 61.09, 62.0),
    ):
        write_result(result_path(folder, column, ipc), cell_record(column, ipc, last, best))
    (folder / "notes.json").write_text("{}")  # not a result file's name: left out
    return folder


def _rows(markdown: str) -> list[list[str]]:
    """The long table's rows (dataset, method, IPC, network, protocol, last, best, ...)."""
    rows = []
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| fashion_mnist |") and len(cells) == 9:
            rows.append(cells)
    return rows


def test_each_result_file_is_one_row_named_by_its_column_in_ipc_then_method_order(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"

    assert main(["report", "--results", str(folder), "--out", str(out)]) == 0

    rows = _rows(capsys.readouterr().out)
    assert [(r[1], r[2], r[5], r[6], r[8]) for r in rows] == [
        ("dit", "1", "61.09 ± 0.25", "62.00 ± 0.50", "1"),
        ("random", "10", "74.27 ± 0.25", "74.50 ± 0.50", "1"),
        ("dit+mode", "10", "74.29 ± 0.25", "74.90 ± 0.50", "1"),
    ]
    markdown = (out / "report.md").read_text()
    assert "| IPC | network | random | dit | dit+mode |" in markdown  # the pivot
    assert "**74.29 ± 0.25**" in markdown  # the best set of its row
    with (out / "report.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [(r["method"], r["run_id"], r["recall"]) for r in table] == [
        ("dit", "dit-ipc1.json", "0.83"),
        ("random", "random-ipc10.json", "0.83"),
        ("dit+mode", "dit+mode-ipc10.json", "0.83"),
    ]


def test_every_committed_result_file_is_reported(tmp_path: Path) -> None:
    committed = ROOT / "benchmarks" / "results" / "fashion_mnist"
    records = read_results(committed)
    assert records, "the repository holds the grid's result files"

    markdown = write_results_report(committed, tmp_path)

    reported = {(r[1], r[2]) for r in _rows(markdown)}
    assert reported == {(r["column"], str(r["ipc"])) for r in records}


def test_a_missing_folder_is_a_clear_error_and_a_nonzero_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"

    assert main(["report", "--results", str(missing), "--out", str(tmp_path / "out")]) == 1

    assert f"result folder {missing} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_result_file_without_a_field_is_named_in_the_error(folder: Path, tmp_path: Path) -> None:
    broken = cell_record("herding", 1, 70.7, 71.0)
    del broken["best_acc_mean"]
    write_result(result_path(folder, "herding", 1), broken)

    with pytest.raises(DataError, match="herding-ipc1.json has no 'best_acc_mean'"):
        write_results_report(folder, tmp_path / "out")


def test_a_diagnostic_undefined_for_the_set_reads_as_a_dash_not_nan(tmp_path: Path) -> None:
    folder = tmp_path / "fashion_mnist"
    single = cell_record("herding", 1, 70.53, 70.53)
    single["diagnostics"] = {"recall": float("nan"), "density": 2.24, "coverage": 0.0224}
    write_result(result_path(folder, "herding", 1), single)

    markdown = write_results_report(folder, tmp_path / "out")

    header = ["dataset", "method", "IPC", *DIAGNOSTICS]
    rows = [[c.strip() for c in x.strip("|").split("|")] for x in markdown.splitlines()]
    cells = next(
        r for r in rows if r[:3] == ["fashion_mnist", "herding", "1"] and len(r) == len(header)
    )
    assert "nan" not in cells
    assert cells[header.index("recall")] == "—"
    assert cells[header.index("density")] == "2.240"
