"""The README's architecture block names every module and package of mdd, so a newcomer's
map of the code is never missing a file."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def architecture_names(readme: str) -> set[str]:
    """The first word of every line of the code block under ``## Architecture``."""
    section = readme[readme.index("## Architecture") :]
    block = section.split("```")[1]
    return set(re.findall(r"^\s+(\S+)\s", block, re.MULTILINE))


def modules(folder: Path) -> list[str]:
    """The modules (``name.py``) and packages (``name/``) directly in ``folder``."""
    found = []
    for path in sorted(folder.iterdir()):
        if path.name in {"__pycache__", "__init__.py"}:
            continue
        if path.is_dir():
            found.append(path.name + "/")
        elif path.suffix == ".py":
            found.append(path.name)
    return found


def test_the_architecture_block_lists_every_module_and_package() -> None:
    names = architecture_names((ROOT / "README.md").read_text())
    expected = modules(ROOT / "mdd") + modules(ROOT / "mdd" / "pipeline")
    assert [name for name in expected if name not in names] == []


def test_a_module_left_out_of_the_block_is_found() -> None:
    readme = "## Architecture\n\n```\nmdd/\n  config.py   typed configuration\n```\n"
    names = architecture_names(readme)
    assert "config.py" in names and "cli.py" not in names
