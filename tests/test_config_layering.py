"""Only the config, the CLI and the pipeline read the whole ``Config``; a stage, the tracker,
the sweep worker and the benchmarks' helpers get the sections and values they use."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mdd"
ALLOWED = ("config.py", "cli.py", "pipeline/")


def config_takers(source: str) -> list[str]:
    """``name(parameter)`` of every function in ``source`` with a parameter typed ``Config``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
        for argument in arguments:
            if argument.annotation is None:
                continue
            annotation = ast.unparse(argument.annotation).strip("'\"")
            if annotation.split(".")[-1] == "Config":
                found.append(f"{node.name}({argument.arg})")
    return found


def test_the_check_finds_a_function_that_takes_the_config() -> None:
    source = (
        "def stage(config: Config, n: int) -> None: ...\n"
        "class A:\n    def method(self, *, cfg: 'mdd.config.Config') -> None: ...\n"
        "def fine(section: FinetuneConfig) -> None: ...\n"
    )
    assert config_takers(source) == ["stage(config)", "method(cfg)"]


def test_no_function_outside_config_cli_and_pipeline_takes_the_whole_config() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(ALLOWED):
            continue
        offenders += [f"mdd/{relative}: {name}" for name in config_takers(path.read_text())]
    assert offenders == []
