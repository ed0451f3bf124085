"""Progress in a log file: whole lines at each tenth or each minute, never a redrawn bar."""

from __future__ import annotations

import io

import pytest
from tqdm import tqdm

from mdd import progress as progress_module
from mdd.progress import LineProgress, progress_bar, progress_mode


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_loop_of_200_items_writes_ten_lines_one_per_tenth_with_rate_and_time_left() -> None:
    stream, clock = io.StringIO(), FakeClock()
    bar = LineProgress(range(200), "fine-tune", None, 0, "it", stream, clock)
    for _ in bar:
        clock.now += 0.5  # 2 items per second
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 10
    assert lines[0] == "fine-tune: 20/200 (10 %), 2.00 it/s, 1 min 30 s left"
    assert lines[4] == "fine-tune: 100/200 (50 %), 2.00 it/s, 50 s left"
    assert lines[-1] == "fine-tune: 200/200 (100 %), 2.00 it/s"


def test_a_slow_loop_writes_a_line_after_a_minute_without_one() -> None:
    stream, clock = io.StringIO(), FakeClock()
    bar = LineProgress(None, "convnet3", 1000, 0, "epoch", stream, clock)
    for _ in range(30):
        clock.now += 3.0
        bar.update()
    # 90 s for 3 % of the loop: one line at 60 s, none at the tenths.
    assert stream.getvalue().splitlines() == [
        "convnet3: 20/1000 (2 %), 0.33 epoch/s, 49 min 00 s left"
    ]


def test_a_resumed_loop_counts_from_where_it_resumed_and_shows_its_postfix() -> None:
    stream, clock = io.StringIO(), FakeClock()
    bar = LineProgress(range(50, 100), "pretrain DiT", 100, 50, "it", stream, clock)
    bar.set_postfix(loss="0.1234")
    for _ in bar:
        clock.now += 1.0
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5  # 60 %, 70 %, 80 %, 90 %, 100 %
    assert lines[0] == "pretrain DiT: 60/100 (60 %), 1.00 it/s, 40 s left, loss=0.1234"


def test_bars_in_a_terminal_lines_in_a_file_and_the_environment_overrides(monkeypatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("MDD_PROGRESS", raising=False)
    assert progress_mode(Terminal()) == "bars"
    assert progress_mode(io.StringIO()) == "lines"
    monkeypatch.setenv("MDD_PROGRESS", "lines")
    assert progress_mode(Terminal()) == "lines"
    monkeypatch.setenv("MDD_PROGRESS", "bars")
    assert isinstance(progress_bar(range(3), desc="x"), tqdm)


@pytest.mark.parametrize("disable, env", [(True, "lines"), (False, "off")])
def test_a_disabled_or_silenced_loop_still_yields_every_item_and_writes_nothing(
    monkeypatch, capsys, disable: bool, env: str
) -> None:
    monkeypatch.setenv("MDD_PROGRESS", env)
    assert list(progress_bar(range(7), desc="x", disable=disable)) == list(range(7))
    assert capsys.readouterr().err == ""


def test_lines_are_written_to_stderr_when_it_is_not_a_terminal(monkeypatch, capsys) -> None:
    monkeypatch.delenv("MDD_PROGRESS", raising=False)
    monkeypatch.setattr(progress_module.sys, "stderr", io.StringIO())
    stream = progress_module.sys.stderr
    with progress_bar(total=4, desc="autoencoder") as bar:
        for _ in range(4):
            bar.update(1)
    assert stream.getvalue().splitlines()[-1].startswith("autoencoder: 4/4 (100 %)")
