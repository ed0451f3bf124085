"""docker/: the compose stack and the image refer only to files, commands and settings that exist.

No Docker engine is needed: the files are read as YAML and text. `docker compose config` is run
where the compose plugin is installed, and skipped with the reason where it is not. The tests of
docker/smoke.sh (which runs the stack for real, with podman; too long for CI) keep it consistent
with compose.yaml and the Dockerfiles: the services it starts and the order it waits for them in,
the images it builds, the settings it writes, the sweep it checks.
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
POSTGRES_DOCKERFILE = DOCKER / "postgres.Dockerfile"
SMOKE = DOCKER / "smoke.sh"

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
    assert stack["services"]["db"]["image"] == "mdd-postgres:15"
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
    services = compose(env_example())["services"]
    builds = {name: s["build"] for name, s in services.items() if "build" in s}
    assert set(builds) == {"db", "mlflow", "data", "worker"}  # no image from a registry
    for build in builds.values():
        context = (DOCKER / build["context"]).resolve()
        assert context == REPO
        assert (context / build["dockerfile"]).is_file()
    # mlflow, data and worker share the mdd image; the database has its own.
    assert builds["mlflow"] == builds["data"] == builds["worker"]
    assert builds["mlflow"]["dockerfile"] == "docker/Dockerfile"
    assert builds["db"]["dockerfile"] == "docker/postgres.Dockerfile"
    assert services["mlflow"]["image"] == services["data"]["image"] == services["worker"]["image"]
    assert services["mlflow"]["image"] != services["db"]["image"]


def dockerfile_arg(path: Path, name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)$", path.read_text(), re.MULTILINE).group(1)


@pytest.mark.parametrize("env", env_settings(), ids=["env.example", "defaults"])
def test_both_images_build_on_the_same_debian_release_by_default(env: dict[str, str]) -> None:
    services = compose(env)["services"]
    bases = {name: services[name]["build"]["args"]["BASE_IMAGE"] for name in ("db", "worker")}
    assert bases == {"db": "debian:bookworm-slim", "worker": "debian:bookworm-slim"}
    assert dockerfile_arg(DOCKERFILE, "BASE_IMAGE") == "debian:bookworm-slim"
    assert dockerfile_arg(POSTGRES_DOCKERFILE, "BASE_IMAGE") == "debian:bookworm-slim"


def test_postgres_image_is_the_release_s_postgresql_on_the_compose_paths() -> None:
    """The image's tag, package and PATH say one major version; PGDATA is the volume's target."""
    text = POSTGRES_DOCKERFILE.read_text()
    major = compose(env_example())["services"]["db"]["image"].rpartition(":")[2]
    assert f"postgresql-{major}" in text.split()
    assert f"PATH=/usr/lib/postgresql/{major}/bin:$PATH" in text
    pgdata = re.search(r"PGDATA=(\S+)", text).group(1)
    db = compose(env_example())["services"]["db"]
    assert f"pgdata:{pgdata}" in db["volumes"]
    # The entrypoint the Dockerfile copies exists, is executable, and reads the init folder
    # compose.yaml mounts the init script into, and the variables compose.yaml sets.
    copies = [line.split()[1:] for line in text.splitlines() if line.startswith("COPY ")]
    assert copies == [["docker/postgres-entrypoint.sh", "/usr/local/bin/postgres-entrypoint.sh"]]
    entrypoint = REPO / copies[0][0]
    assert os.access(entrypoint, os.X_OK)
    assert f'ENTRYPOINT ["{copies[0][1]}"]' in text
    script = entrypoint.read_text()
    init_target = next(m.split(":")[1] for m in db["volumes"] if m.startswith("./"))
    assert f"{Path(init_target).parent}/*" in script
    assert set(db["environment"]) <= set(re.findall(r"\$\{?(POSTGRES_[A-Z]+)", script))
    # Its healthcheck's pg_isready comes with the server package, on that PATH.
    assert db["healthcheck"]["test"][1] == "pg_isready"
    ignore = (DOCKER / "postgres.Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore and f"!{copies[0][0]}" in ignore


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


# -- docker/smoke.sh ---------------------------------------------------------------------------


def smoke_text() -> str:
    return SMOKE.read_text()


def smoke_setting(name: str) -> str:
    """A top-level NAME=value of docker/smoke.sh, with $OTHER settings of it filled in."""
    value = re.search(rf"^{name}=(\S+)$", smoke_text(), re.MULTILINE).group(1)
    return re.sub(r"\$([A-Z_]+)", lambda m: smoke_setting(m.group(1)), value)


def smoke_env_file() -> dict[str, str]:
    """The settings smoke.sh writes into the stack's env file (`echo "NAME=value"` lines)."""
    return dict(re.findall(r'^\s+echo "([A-Z_]+)=([^"]*)"', smoke_text(), re.MULTILINE))


def smoke_starts() -> list[tuple[str, str]]:
    """(service, what the script waits for) of each `start_service` call, in order."""
    return re.findall(r"^start_service (\S+) (\S+)", smoke_text(), re.MULTILINE)


def test_smoke_script_is_strict_bash_and_executable() -> None:
    text = smoke_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -Eeuo pipefail\n" in text
    assert os.access(SMOKE, os.X_OK)
    result = subprocess.run(["bash", "-n", str(SMOKE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # Every failure names its phase, and the stack is taken down (images kept) on any exit.
    assert "trap cleanup EXIT" in text and "rmi" not in text
    assert "down --volumes --remove-orphans" in text  # the --scale workers and the volumes too


def test_smoke_script_runs_the_compose_file_of_this_directory() -> None:
    text = smoke_text()
    assert "COMPOSE_FILE=$REPO/docker/compose.yaml" in text
    assert '--file "$COMPOSE_FILE"' in text
    # Its own project, so a stack started from docker/.env is left alone.
    assert smoke_setting("PROJECT") != yaml.safe_load(COMPOSE.read_text())["name"]


def test_smoke_script_starts_every_service_once_after_what_it_depends_on() -> None:
    services = compose(env_example())["services"]
    starts = smoke_starts()
    order = [service for service, _ in starts]
    assert sorted(order) == sorted(services)  # every service, once
    waits = dict(starts)
    awaited = {"service_healthy": "healthy", "service_completed_successfully": "completed"}
    for position, service in enumerate(order):
        for dependency, spec in services[service].get("depends_on", {}).items():
            assert order.index(dependency) < position, (service, dependency)
            assert waits[dependency] == awaited[spec["condition"]], (service, dependency)
    # The script runs compose's own health check: only services that have one are waited on
    # as healthy, and the services waited on as completed are the ones that exit.
    for service, until in starts:
        assert (until == "healthy") == ("healthcheck" in services[service]), service
        assert (until == "completed") == (services[service].get("restart") != "unless-stopped")


def test_smoke_script_builds_each_image_of_the_stack_once() -> None:
    services = compose(env_example())["services"]
    built = re.search(r"^BUILD_SERVICES=\(([^)]*)\)$", smoke_text(), re.MULTILINE).group(1).split()
    images = [services[name]["image"] for name in built]
    assert len(set(images)) == len(images)  # one service per image
    assert set(images) == {s["image"] for s in services.values() if "build" in s}
    # The base it imports is the one both images are built on, of the release they name.
    env = smoke_env_file()
    base = smoke_setting("BASE_IMAGE")
    assert env["MDD_BASE_IMAGE"] == env["MDD_DB_BASE_IMAGE"] == "$BASE_IMAGE"
    assert base == f"localhost/mdd-debian:{smoke_setting('SUITE')}"
    release = dockerfile_arg(DOCKERFILE, "BASE_IMAGE").split(":")[1].split("-")[0]
    assert smoke_setting("SUITE") == release == "bookworm"
    assert '--variant=minbase "$SUITE"' in smoke_text()
    assert 'podman image exists "$BASE_IMAGE"' in smoke_text()  # imported once, then reused


def test_smoke_script_sets_only_variables_compose_uses() -> None:
    env = smoke_env_file()
    assert set(env) <= set(env_example())
    assert {"POSTGRES_PASSWORD", "MDD_SWEEP", "MDD_EXPERIMENT"} <= set(env)
    # docker/.env (a user's password) is never read: the script names its own env file.
    assert '--env-file "$ENV_FILE"' in smoke_text() and "docker/.env" not in env.values()


def test_smoke_script_checks_the_sweep_its_workers_run() -> None:
    env = smoke_env_file()
    sweep_path, experiment_path = smoke_setting("SWEEP"), smoke_setting("EXPERIMENT")
    assert (env["MDD_SWEEP"], env["MDD_EXPERIMENT"]) == ("$SWEEP", "$EXPERIMENT")
    settings = {**env_example(), "MDD_SWEEP": sweep_path, "MDD_EXPERIMENT": experiment_path}
    services = compose(settings)["services"]
    assert sweep_path in services["worker"]["command"]
    assert experiment_path in services["data"]["command"]
    sweep = yaml.safe_load((REPO / sweep_path).read_text())
    assert (REPO / sweep_path).parent.joinpath(sweep["base"]).resolve() == REPO / experiment_path
    assert sweep_path.startswith("sweeps/")  # the image copies sweeps/ and experiments/
    # The checks run in the image (the file at /app/$SWEEP), and name the studies as mdd does.
    assert '--env SMOKE_SWEEP="$SWEEP"' in smoke_text()
    assert "f\"{sweep['name']}-ipc{ipc}\"" in smoke_text()
    from mdd.sweep.config import load_sweep
    from mdd.sweep.worker import study_name

    loaded, _ = load_sweep(str(REPO / sweep_path))
    assert [study_name(loaded, ipc) for ipc in loaded.ipc] == [
        f"{sweep['name']}-ipc{ipc}" for ipc in sweep["ipc"]
    ]
    assert loaded.budget.n_trials == sweep["budget"]["n_trials"]
    assert loaded.final.enabled == sweep.get("final", {}).get("enabled", True)


def test_smoke_script_names_pip_and_engine_settings_the_dockerfile_reads() -> None:
    text = smoke_text()
    # The torch index it may set is the Dockerfile's TORCH_INDEX_URL, through compose.
    args = yaml.safe_load(COMPOSE.read_text())["x-mdd-image"]["build"]["args"]
    assert args["TORCH_INDEX_URL"].startswith("${MDD_TORCH_INDEX_URL:-")
    assert 'echo "MDD_TORCH_INDEX_URL=$TORCH_INDEX"' in text
    assert 'pip install --index-url "$TORCH_INDEX_URL"' in DOCKERFILE.read_text()
    # pip's configuration goes where pip in the image reads a global one.
    assert ":/etc/xdg/pip:ro" in text
    # Engine settings through CONTAINERS_CONF only: the machine's own files stay untouched.
    assert "/etc/containers" not in text
