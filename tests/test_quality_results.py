"""The quality grid's result files render into the README's table, and the README holds
exactly what the committed files render (no number typed by hand)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mdd.grid import load_results, render, render_sources, render_table, replace_block
from mdd.results import read_result, result_path, write_result

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def record(column: str, ipc: int, mean: float, std: float) -> dict:
    return {
        "column": column,
        "ipc": ipc,
        "last_acc_mean": mean,
        "last_acc_std": std,
        "distill_wall_s": 12.4,
        "eval_wall_s": 600.6,
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "machine": {"cpu": "Some CPU", "cores": 2, "gpu": None, "torch": "2.14.1"},
    }


def test_result_files_round_trip_and_load_in_ipc_then_column_order(tmp_path: Path) -> None:
    for column, ipc in (("minimax", 10), ("random", 10), ("dit", 1)):
        write_result(result_path(tmp_path, column, ipc), record(column, ipc, 70.0, 0.5))
    (tmp_path / "notes.json").write_text("{}")  # not a cell's file: ignored
    (tmp_path / "broken-ipc3.json").write_text("{")  # unreadable: ignored, not fatal
    loaded = load_results(tmp_path)
    assert [(r["column"], r["ipc"]) for r in loaded] == [
        ("dit", 1),
        ("random", 10),
        ("minimax", 10),
    ]
    assert read_result(result_path(tmp_path, "dit", 1))["schema"] == 1
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    assert result_path(tmp_path, "dit", 1).stat().st_mode & 0o777 == 0o644


def test_the_table_has_every_column_marks_missing_cells_and_shows_the_published_figures() -> None:
    table = render_table([record("dit", 10, 72.791, 0.264)], {1: "70.5 / 70.6", 10: "82.3 / 84.6"})
    lines = table.splitlines()
    assert lines[0] == (
        "| IPC | random | herding | kcenter | dit | minimax | minimax-swept | full "
        "| DC / DSA / KIP, published |"
    )
    assert lines[2] == "| 1 | " + " | ".join(["not run"] * 7) + " | 70.5 / 70.6 |"
    assert lines[3] == (
        "| 10 | not run | not run | not run | 72.79 ± 0.26 | not run | not run | not run "
        "| 82.3 / 84.6 |"
    )
    assert render_sources([record("dit", 10, 72.791, 0.264)]) == (
        "- dit at IPC 10: Some CPU (2 cores), torch 2.14.1, commit 0123456, distillation 12 s, "
        "evaluation 601 s."
    )


def test_sources_name_minimax_weights_only_where_they_are_not_the_published_ones() -> None:
    published = record("minimax", 10, 72.6, 0.3) | {"lambda_r": 0.002, "lambda_d": 0.008}
    tenfold = record("minimax", 10, 72.97, 0.38) | {"lambda_r": 0.02, "lambda_d": 0.08}
    plugin = published | {"column": "minimax+mode"}
    assert "minimax at IPC 10: Some CPU" in render_sources([published])
    assert "minimax at IPC 10 (lambda_r 0.02, lambda_d 0.08): " in render_sources([tenfold])
    assert "(lambda_r 0.002, lambda_d 0.008)" in render_sources([plugin])


def test_sources_name_sampler_settings_only_where_they_are_not_the_defaults() -> None:
    sampler = {"steps": 50, "scheduler": "ddpm", "guidance_scale": 2.0}
    default = record("dit", 10, 72.6, 0.3) | {"sampler": sampler}
    longer = record("dit", 10, 72.6, 0.3) | {"sampler": sampler | {"steps": 250}}
    unguided = record("dit", 10, 72.6, 0.3) | {"sampler": sampler | {"guidance_scale": 1.0}}
    assert "dit at IPC 10: Some CPU" in render_sources([default])
    assert "dit at IPC 10 (250 DDPM steps): " in render_sources([longer])
    assert "dit at IPC 10 (guidance scale 1): " in render_sources([unguided])
    start = {"kind": "prototypes", "strength": 0.5}
    started = record("dit+prototypes", 10, 74.0, 0.3) | {"sampler": sampler | {"start": start}}
    assert "dit+prototypes at IPC 10 (from prototypes, strength 0.5): " in render_sources([started])


def test_sources_say_when_a_cell_ran_with_uncommitted_changes() -> None:
    clean = record("dit", 10, 72.6, 0.3) | {"git_dirty": "false"}
    dirty = record("dit", 10, 72.6, 0.3) | {"git_dirty": "true"}
    assert "commit 0123456, distillation" in render_sources([clean])
    assert "commit 0123456 with uncommitted changes, distillation" in render_sources([dirty])


def test_sources_name_the_base_only_where_it_is_not_the_shipped_one() -> None:
    shipped = {"checkpoint": "mdd/assets/fashion_mnist_base", "autoencoder_epochs": 3.0}
    other = {"checkpoint": "runs/base_ae10", "autoencoder_epochs": 10.0, "pretrain_epochs": 10.0}
    plain = record("dit", 10, 72.6, 0.3) | {"base": shipped | {"pretrain_epochs": 10.0}}
    assert "dit at IPC 10: " in render_sources([plain])
    assert "dit at IPC 10 (base runs/base_ae10: autoencoder 10 epochs, DiT 10): " in (
        render_sources([record("dit", 10, 72.6, 0.3) | {"base": other}])
    )


def test_replace_block_sets_the_lines_between_the_markers_and_needs_exactly_one_block() -> None:
    text = "a\n<!-- q -->\nold\n<!-- /q -->\nb\n"
    assert replace_block(text, "q", "new") == "a\n<!-- q -->\nnew\n<!-- /q -->\nb\n"
    with pytest.raises(ValueError, match="expected one"):
        replace_block("no block", "q", "new")


def test_a_study_folder_renders_its_plugin_table_and_sources_without_the_grid(
    tmp_path: Path,
) -> None:
    study = tmp_path / "fashion_mnist_pools"
    write_result(result_path(study, "dit+kcenter", 1), record("dit+kcenter", 1, 68.744, 0.1))
    body = render("fashion_mnist", RESULTS, study)
    assert "| IPC | random |" not in body  # the grid's columns belong to the grid's folder
    assert body.splitlines()[:3] == [
        "| IPC | dit+kcenter |",
        "|---|---|",
        "| 1 | 68.74 ± 0.10 |",
    ]
    assert "- dit+kcenter at IPC 1: Some CPU" in body


def test_the_grid_note_says_how_many_epochs_full_was_trained(tmp_path: Path) -> None:
    grid = tmp_path / "fashion_mnist"  # the grid's folder, under a results root of its own
    write_result(result_path(grid, "dit", 10), record("dit", 10, 72.6, 0.2) | {"epochs": 1000})
    note = "`full` trains on the whole training split (published"
    assert note in render("fashion_mnist", tmp_path)
    full = record("full", 10, 91.72, 0.22) | {"epochs": 20}
    write_result(result_path(grid, "full", 10), full)
    note = "whole training split for 20 epochs (published: about 93.5)"
    assert note in render("fashion_mnist", tmp_path)


@pytest.mark.parametrize(
    "folder", sorted(p.name for p in (ROOT / "benchmarks" / "results").iterdir() if p.is_dir())
)
def test_the_readme_table_is_what_the_committed_result_files_render(folder: str) -> None:
    check = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "render_results.py"),
            "--results",
            str(ROOT / "benchmarks" / "results" / folder),
            "--check",
            "README.md",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr
