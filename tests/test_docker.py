"""docker/: the compose stack and the image refer only to files, commands and settings that exist.

No Docker engine is needed: the files are read as YAML and text. `docker compose config` is run
where the compose plugin is installed, and skipped with the reason where it is not.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / "env.example"
DOCKERFILE = DOCKER / "Dockerfile"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def resolve(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation of ``value`` with ``env``, falling back on the defaults."""
    if isinstance(value, dict):
        return {key: resolve(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, operator, default = match.groups()
        if env.get(name):
            return env[name]
        return default if operator in ("-", ":-") else ""

    return _VARIABLE.sub(substitute, value)


def compose(env: dict[str, str]) -> dict[str, Any]:
    return resolve(yaml.safe_load(COMPOSE.read_text()), env)


def strings(value: Any) -> list[str]:
    """Every string in a parsed YAML document, keys and values."""
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in strings(key) + strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in strings(item)]
    return [value] if isinstance(value, str) else []


def env_settings() -> list[dict[str, str]]:
    """docker/env.example as shipped, and no settings at all (compose's own defaults)."""
    return [env_example(), {}]


def test_stack_has_database_tracking_server_data_and_worker_on_named_volumes() -> None:
    stack = compose(env_example())
    assert set(stack["services"]) == {"db", "mlflow", "data", "worker"}
    assert set(stack["volumes"]) == {"pgdata", "mlflow-artifacts", "runs"}
    assert stack["services"]["db"]["image"] == "postgres:15"
    worker = stack["services"]["worker"]
    assert worker["depends_on"]["db"]["condition"] == "service_healthy"
    assert worker["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert worker["depends_on"]["data"]["condition"] == "service_completed_successfully"
    # --scale worker=N needs a worker without a fixed container name or published port.
    assert "container_name" not in worker and "ports" not in worker
    named = {
        mount.split(":")[0]
        for service in stack["services"].values()
        for mount in service.get("volumes", [])
        if not mount.startswith((".", "/"))
    }
    assert named == set(stack["volumes"])


def test_build_context_and_dockerfile_exist() -> None:
    builds = [s["build"] for s in compose(env_example())["services"].values() if "build" in s]
    assert len(builds) == 3  # mlflow, data and worker share the mdd image
    for build in builds:
        context = (DOCKER / build["context"]).resolve()
        assert context == REPO
        assert (context / build["dockerfile"]).is_file()


def test_bind_mounted_files_exist_and_the_init_script_creates_the_optuna_database() -> None:
    stack = compose(env_example())
    mounts = [
        mount.split(":")
        for service in stack["services"].values()
        for mount in service.get("volumes", [])
        if mount.startswith((".", "/"))
    ]
    assert [target for _, target, _ in mounts] == ["/docker-entrypoint-initdb.d/optuna.sql"]
    init_sql = (DOCKER / mounts[0][0]).read_text()
    assert "CREATE DATABASE optuna;" in init_sql
    storage = stack["services"]["worker"]["command"][3]
    assert storage == "postgresql+psycopg2://mdd@db:5432/optuna"
    backend = stack["services"]["mlflow"]["command"][3]
    database = stack["services"]["db"]["environment"]["POSTGRES_DB"]
    assert backend == f"postgresql+psycopg2://mdd@db:5432/{database}"


@pytest.mark.parametrize("env", env_settings(), ids=["env.example", "defaults"])
def test_sweep_and_experiment_files_named_in_commands_exist(env: dict[str, str]) -> None:
    named = [
        arg
        for service in compose(env)["services"].values()
        for arg in service.get("command", [])
        if arg.endswith(".yaml")
    ]
    assert named == ["experiments/fashion_mnist.yaml", "sweeps/fashion_mnist.yaml"]
    missing = [path for path in named if not (REPO / path).is_file()]
    assert missing == []


def test_commands_start_with_console_scripts_that_are_installed() -> None:
    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])
    installed = {entry.name for entry in entry_points(group="console_scripts")}
    services = compose(env_example())["services"]
    programs = {name: s["command"][0] for name, s in services.items() if "command" in s}
    assert programs == {"mlflow": "mlflow", "data": "mdd", "worker": "mdd-sweep"}
    assert {"mdd", "mdd-sweep"} <= declared
    assert set(programs.values()) <= installed


@pytest.mark.parametrize("env", env_settings(), ids=["env.example", "defaults"])
def test_ports_are_published_on_loopback_only(env: dict[str, str]) -> None:
    ports = {
        name: service["ports"]
        for name, service in compose(env)["services"].items()
        if "ports" in service
    }
    assert ports == {"db": ["127.0.0.1:5432:5432"], "mlflow": ["127.0.0.1:5000:5000"]}


def test_the_password_reaches_containers_only_as_environment_variables() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())["services"]
    passwords = {
        (name, key): value
        for name, service in raw.items()
        for key, value in service.get("environment", {}).items()
        if "PASSWORD" in key
    }
    assert set(passwords) == {
        ("db", "POSTGRES_PASSWORD"),
        ("mlflow", "PGPASSWORD"),
        ("worker", "PGPASSWORD"),
    }
    for value in passwords.values():
        assert _VARIABLE.fullmatch(value).group(1) == "POSTGRES_PASSWORD"
    # Resolved with a password, it shows up in no command, URL or other setting.
    services = compose({**env_example(), "POSTGRES_PASSWORD": "s3cret-sentinel"})["services"]
    for service in services.values():
        service.pop("environment", None)
    assert [text for text in strings(services) if "s3cret-sentinel" in text] == []
    # The shipped example holds no password to reuse, and the stack refuses to start without one.
    assert env_example()["POSTGRES_PASSWORD"] == ""
    assert raw["db"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_env_example_sets_every_variable_compose_uses_with_the_same_defaults() -> None:
    example = env_example()
    used = [
        variable
        for text in strings(yaml.safe_load(COMPOSE.read_text()))
        for variable in _VARIABLE.findall(text)
    ]
    assert {name for name, _, _ in used} == set(example)
    defaults = {name: default for name, operator, default in used if operator == ":-"}
    assert defaults == {name: example[name] for name in defaults}


def test_dockerfile_copies_only_existing_paths() -> None:
    sources = [
        source
        for line in DOCKERFILE.read_text().splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    ]
    assert sources == ["pyproject.toml", "README.md", "mdd/", "experiments/", "sweeps/"]
    assert [path for path in sources if not (REPO / path).exists()] == []


def test_dockerfile_finds_the_exact_torch_pins_of_pyproject() -> None:
    # The image installs torch and torchvision first from the CPU index, picking their lines
    # out of pyproject.toml with this pattern: a loosened pin would install nothing there.
    pattern = re.search(r"grep -E '([^']+)'", DOCKERFILE.read_text()).group(1)
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = [dep for dep in dependencies if re.search(pattern, dep)]
    assert pinned == ["torch==2.14.1", "torchvision==0.29.1"]


def test_docker_compose_config_accepts_the_stack() -> None:
    try:
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("no docker client on this machine")
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    env = {**os.environ, "POSTGRES_PASSWORD": "only-for-this-check"}
    command = ["docker", "compose", "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE)]
    result = subprocess.run(
        [*command, "config", "--quiet"], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 0, result.stderr
