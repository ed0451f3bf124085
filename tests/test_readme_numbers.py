"""Every figure in the README's results section stands on a committed file.

A figure (a number with a decimal point) in the section's prose must be a number of a
result file under ``benchmarks/results/`` or a benchmark output under
``benchmarks/outputs/``, written at the precision the prose uses, or a figure of one of the
section's rendered blocks (which ``test_quality_results.py`` holds to their files). Code
blocks are commands, not readings, and are left out.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = (ROOT / "benchmarks" / "results", ROOT / "benchmarks" / "outputs")
HEADING = "## Results so far"
FIGURE = re.compile(r"(?<![\w.])\d+\.\d+(?!\d|\.\d)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
BLOCK = re.compile(r"^<!-- (quality-[\w+-]+) -->$.*?^<!-- /\1 -->$", re.S | re.M)


def results_section(readme: str) -> str:
    """The text from the results heading to the next heading of the same level."""
    start = readme.index(HEADING)
    end = readme.find("\n## ", start + len(HEADING))
    return readme[start : end if end != -1 else None]


def numbers(value: object) -> list[float]:
    """Every number in a parsed JSON value."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for item in value.values() for n in numbers(item)]
    if isinstance(value, list):
        return [n for item in value for n in numbers(item)]
    return []


def file_figures(folders: tuple[Path, ...] = FILES) -> set[str]:
    """The files' numbers written with 1 to 4 decimals, as prose may round them."""
    figures: set[str] = set()
    for folder in folders:
        for path in folder.rglob("*.json"):
            for number in numbers(json.loads(path.read_text(encoding="utf-8"))):
                figures.update(f"{number:.{digits}f}" for digits in range(1, 5))
    return figures


def untraced(section: str, allowed: set[str]) -> list[str]:
    """The prose's figures that neither a file nor a rendered block holds."""
    blocks = "\n".join(m.group(0) for m in BLOCK.finditer(section))
    allowed = allowed | set(FIGURE.findall(blocks))
    prose = BLOCK.sub("", FENCE.sub("", section))
    return sorted({f for f in FIGURE.findall(prose) if f not in allowed})


def test_a_figure_is_traced_only_when_a_file_or_a_rendered_block_holds_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "cell.json").write_text(json.dumps({"acc": [72.6033], "recall": 0.6841}))
    allowed = file_figures((tmp_path,))
    section = (
        "## Results so far\n\nIt gave 72.60 (recall 0.68), 0.684 and 74.27.\n\n"
        "```bash\nrun --weight 0.0221\n```\n\n"
        "<!-- quality-x -->\n| 10 | 78.99 |\n<!-- /quality-x -->\n\nHerding 78.99, 1.85 above.\n"
    )
    assert untraced(section, allowed) == ["1.85", "74.27"]


def test_every_figure_in_the_readme_results_section_is_in_a_committed_file() -> None:
    section = results_section((ROOT / "README.md").read_text(encoding="utf-8"))
    missing = untraced(section, file_figures())
    assert not missing, f"figures in README's results section with no file behind them: {missing}"
