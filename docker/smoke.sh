#!/usr/bin/env bash
# docker/smoke.sh: the compose stack for real, on a machine that reaches no image registry.
#
#   sudo docker/smoke.sh            # as root: debootstrap and rootful podman
#
# 1. base     a Debian base image made here: `debootstrap --variant=minbase` of the release the
#             images use (bookworm: compose.yaml's debian:bookworm-slim), imported into podman
#             as localhost/mdd-debian:bookworm; kept and reused by later runs.
# 2. build    the images of docker/compose.yaml (mdd-postgres:15 and mdd:cpu) on that base, with
#             podman-compose; pip inside the build sees this machine's pip configuration and the
#             local package folders it names (mounted read-only into the RUN steps).
# 3. stack    compose.yaml's services, one after the other in its depends_on order: db and
#             mlflow until their health checks pass, data until it exits 0, then the workers.
#             The sweep is sweeps/smoke.yaml (4 trials of experiments/smoke.yaml).
# 4. sweep    waits for every worker to exit 0.
# 5. check    the trial counts in PostgreSQL (Optuna's tables, read with psql in the db
#             container) against the sweep's budget, and the runs on the MLflow server (a
#             parent per study, one run per trial with the trial's state, the final rerun).
# 6. cleanup  `podman-compose down --volumes --remove-orphans` (and whatever it leaves with the
#             project's label): containers, network and the project's volumes go, the images
#             stay. MDD_SMOKE_KEEP=1 leaves the stack up instead. A run first removes what an
#             earlier run left, so every run starts with an empty database and stage cache.
#
# Podman only (podman >= 4, runc or crun; podman-compose comes from PyPI into the work folder).
# podman without systemd runs no health checks by itself, and podman-compose ignores the
# depends_on health conditions under podman < 4.6, so the script starts the services in order
# and runs each health check (compose.yaml's own `test`) with `podman healthcheck run` until it
# passes. The work folder holds logs that name the run's (throwaway) database password: 0700.
# Settings (environment): MDD_SMOKE_WORKERS (2), MDD_SMOKE_TIMEOUT_S (the sweep's limit,
# 7200), MDD_SMOKE_WORK (work folder, ~/.cache/mdd-smoke), MDD_SMOKE_MIRROR (Debian mirror),
# MDD_SMOKE_RUNTIME (OCI runtime; runc where installed), MDD_SMOKE_PODMAN_COMPOSE (a
# podman-compose >= 1.1 to use), MDD_SMOKE_KEEP.
# tests/test_docker.py keeps this script, compose.yaml and the Dockerfiles consistent.
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMPOSE_FILE=$REPO/docker/compose.yaml
PROJECT=mdd-smoke
SWEEP=sweeps/smoke.yaml
EXPERIMENT=experiments/smoke.yaml
SUITE=bookworm
BASE_IMAGE=localhost/mdd-debian:$SUITE
PODMAN_COMPOSE_VERSION=1.6.0
WORKERS=${MDD_SMOKE_WORKERS:-2}
SWEEP_TIMEOUT_S=${MDD_SMOKE_TIMEOUT_S:-7200}
WORK=${MDD_SMOKE_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/mdd-smoke}
MIRROR=${MDD_SMOKE_MIRROR:-http://deb.debian.org/debian}

START=$SECONDS
PHASE=setup
PHASE_START=$SECONDS
STACK_UP=0

phase() {
    PHASE=$1
    PHASE_START=$SECONDS
    printf '\n== %s  [%s, +%ds]\n' "$PHASE" "$(date '+%H:%M:%S')" $((SECONDS - START))
}
phase_done() { printf -- '-- %s: %ds\n' "$PHASE" $((SECONDS - PHASE_START)); }
note() { printf '   %s\n' "$*"; }
die() {
    printf '\nsmoke.sh: FAILED in phase %s: %s\n' "$PHASE" "$*" >&2
    exit 1
}
trap 'die "command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

pc() { "$PODMAN_COMPOSE" --project-name "$PROJECT" --file "$COMPOSE_FILE" --env-file "$ENV_FILE" "$@"; }
containers_of() {
    podman ps --all --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | sort
}

remove_stack() {  # podman-compose down, then whatever it leaves of the project (checked)
    local label=label=com.docker.compose.project=$PROJECT left
    pc down --volumes --remove-orphans >>"$WORK/down.log" 2>&1 || true
    podman ps --all --quiet --filter "$label" | xargs -r podman rm --force >>"$WORK/down.log" 2>&1 || true
    podman volume ls --quiet --filter "$label" | xargs -r podman volume rm --force >>"$WORK/down.log" 2>&1 || true
    podman network ls --quiet --filter "$label" | xargs -r podman network rm --force >>"$WORK/down.log" 2>&1 || true
    left=$(podman ps --all --quiet --filter "$label"; podman volume ls --quiet --filter "$label")
    [ -z "$left" ] || { note "left of $PROJECT (see $WORK/down.log): $left"; return 1; }
}

show_logs() {
    local name
    for name in $(podman ps --all --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}'); do
        printf '\n--- last lines of %s:\n' "$name" >&2
        podman logs --tail 40 "$name" 2>&1 | sed 's/^/    /' >&2 || true
    done
}

cleanup() {
    local status=$?
    trap - ERR
    set +e
    if [ "$STACK_UP" = 1 ]; then
        [ "$status" != 0 ] && show_logs
        if [ "${MDD_SMOKE_KEEP:-0}" = 1 ]; then
            printf '\n== cleanup skipped (MDD_SMOKE_KEEP=1): %s --project-name %s --file %s --env-file %s down -v --remove-orphans\n' \
                "$PODMAN_COMPOSE" "$PROJECT" "$COMPOSE_FILE" "$ENV_FILE"
        else
            phase cleanup
            if remove_stack; then
                note "containers, network and volumes of $PROJECT removed; images kept"
            else
                status=1
                printf 'smoke.sh: FAILED in phase cleanup: the stack is not fully removed\n' >&2
            fi
            phase_done
        fi
    fi
    if [ "$status" = 0 ]; then
        printf '\nsmoke.sh: PASSED in %ds\n' $((SECONDS - START))
    else
        printf '\nsmoke.sh: exit %d after %ds\n' "$status" $((SECONDS - START)) >&2
    fi
    exit "$status"
}
trap cleanup EXIT

# -- setup: tools, engine settings, the stack's settings -------------------------------------
phase setup
command -v podman >/dev/null || die "podman is not installed (Debian: apt-get install podman runc)"
command -v python3 >/dev/null || die "python3 is not installed (podman-compose needs it)"
[ -f "$REPO/$SWEEP" ] && [ -f "$REPO/$EXPERIMENT" ] || die "$SWEEP or $EXPERIMENT is missing"
mkdir -p "$WORK"
chmod 700 "$WORK"

# Engine settings of this script's podman calls only (the machine's own stay untouched):
# the OCI runtime, and ulimits within this machine's hard limits (podman's defaults exceed
# them on some machines, and runc then refuses to start any container; an nproc above
# kernel.pid_max is refused too).
if [ -z "${CONTAINERS_CONF:-}" ]; then
    RUNTIME=${MDD_SMOKE_RUNTIME:-$(command -v runc || true)}
    nofile=65536 nproc=65536
    limit=$(ulimit -Hn)
    [ "$limit" != unlimited ] && [ "$limit" -lt "$nofile" ] && nofile=$limit
    for limit in "$(ulimit -Hu)" "$(cat /proc/sys/kernel/pid_max)"; do
        [ "$limit" != unlimited ] && [ "$limit" -lt "$nproc" ] && nproc=$limit
    done
    {
        echo "[containers]"
        echo "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
        echo "[engine]"
        if [ -n "$RUNTIME" ]; then echo "runtime = \"$RUNTIME\""; fi
    } >"$WORK/containers.conf"
    export CONTAINERS_CONF=$WORK/containers.conf
fi
note "podman $(podman version --format '{{.Client.Version}}'), settings $CONTAINERS_CONF:"
sed 's/^/     /' "$CONTAINERS_CONF"

PODMAN_COMPOSE=${MDD_SMOKE_PODMAN_COMPOSE:-$WORK/venv/bin/podman-compose}
if [ ! -x "$PODMAN_COMPOSE" ]; then
    note "installing podman-compose $PODMAN_COMPOSE_VERSION into $WORK/venv"
    python3 -m venv "$WORK/venv"
    "$WORK/venv/bin/pip" install "podman-compose==$PODMAN_COMPOSE_VERSION" >"$WORK/pip.log" 2>&1 \
        || die "could not install podman-compose from PyPI: see $WORK/pip.log"
fi
note "$("$PODMAN_COMPOSE" --version 2>/dev/null | grep -i 'podman-compose' | head -n 1)"

# pip in the image builds: the package sources pip has here (`pip config list`: indexes,
# find-links, constraints, the certificates it trusts) in a pip.conf mounted at /etc/xdg/pip, and every local folder they
# name, read-only, into the RUN steps; torch from a local index that has it, if one does
# (TORCH_INDEX_URL), with the others, then the usual index, for its dependencies.
BUILD_MOUNTS=()
TORCH_INDEX=
while read -r kind value; do
    case $kind in
        mount) BUILD_MOUNTS+=("-v $value:$value:ro") ;;
        conf) BUILD_MOUNTS+=("-v $value:/etc/xdg/pip:ro") ;;
        torch) [ -n "$TORCH_INDEX" ] || TORCH_INDEX=$value ;;
    esac
done < <(python3 - "$WORK/pip" <<'PY'
import pathlib, shlex, shutil, subprocess, sys

listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                        capture_output=True, text=True).stdout
keys = ("index-url", "extra-index-url", "find-links", "constraint", "cert")
values = {key: [] for key in keys}
for line in listed.splitlines():
    name, _, value = line.partition("=")
    key = name.rpartition(".")[2]
    if key in keys:
        for item in shlex.split(value)[0].split() if value else []:
            if item not in values[key]:
                values[key].append(item)
out = pathlib.Path(sys.argv[1])
shutil.rmtree(out, ignore_errors=True)
out.mkdir(parents=True)
mounts, lines = set(), ["[global]"]
for number, path in enumerate(values.pop("constraint")):
    if pathlib.Path(path).is_file():
        shutil.copy(path, out / f"constraints-{number}.txt")
        lines.append(f"constraint = /etc/xdg/pip/constraints-{number}.txt")
# The certificates pip trusts here (a proxy's own CA, say), not those the image installs.
for path in values.pop("cert")[-1:]:
    if pathlib.Path(path).is_file():
        shutil.copy(path, out / "ca-certificates.crt")
        lines.append("cert = /etc/xdg/pip/ca-certificates.crt")
# torch comes from a local index (--index-url): the index pip uses here goes last among the
# extra ones, so that it is asked only for what the local folders lack.
values["extra-index-url"] += values.pop("index-url") or ["https://pypi.org/simple"]
for key, items in values.items():
    if items:
        lines.append(f"{key} = {' '.join(items)}")
    for item in items:
        local = pathlib.Path(item.removeprefix("file://"))
        if item.startswith(("file://", "/")) and local.exists():
            # An index's project pages link to files beside its simple/ folder.
            mounts.add(str(local.parent if local.name == "simple" else local))
            if item.startswith("file://") and (local / "torch").is_dir():
                print("torch", item)
(out / "pip.conf").write_text("\n".join(lines) + "\n")
print("conf", out)
for mount in sorted(mounts):
    print("mount", mount)
PY
)
note "the builds' pip: $WORK/pip/pip.conf ($(grep -c = "$WORK/pip/pip.conf") settings), mounts: ${BUILD_MOUNTS[*]}"

# The stack's settings: this script's own env file (docker/.env, if any, is not read), a
# fresh password per run, free ports on loopback, the smoke sweep for the workers.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ENV_FILE=$WORK/smoke.env
{
    echo "POSTGRES_USER=mdd"
    echo "POSTGRES_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
    echo "MDD_SWEEP=$SWEEP"
    echo "MDD_EXPERIMENT=$EXPERIMENT"
    echo "MDD_WORKER_THREADS=1"
    echo "MDD_BIND_HOST=127.0.0.1"
    echo "MDD_DB_PORT=$(free_port)"
    echo "MDD_MLFLOW_PORT=$(free_port)"
    echo "MDD_BASE_IMAGE=$BASE_IMAGE"
    echo "MDD_DB_BASE_IMAGE=$BASE_IMAGE"
    echo "MDD_IMAGE_TAG=cpu"
    if [ -n "$TORCH_INDEX" ]; then echo "MDD_TORCH_INDEX_URL=$TORCH_INDEX"; fi
} >"$ENV_FILE"
chmod 600 "$ENV_FILE"
# podman-compose lets the environment win over the env file: the same values in both.
set -a
# shellcheck disable=SC1090
. "$ENV_FILE"
set +a
note "stack settings: $ENV_FILE (project $PROJECT, $WORKERS workers, sweep $SWEEP)"
: >"$WORK/down.log"
if [ -n "$(podman ps --all --quiet --filter "label=com.docker.compose.project=$PROJECT"
           podman volume ls --quiet --filter "label=com.docker.compose.project=$PROJECT")" ]; then
    note "removing what an earlier run left of $PROJECT (its volumes too: a fresh study and cache)"
    remove_stack || die "could not remove the earlier stack: see $WORK/down.log"
fi
phase_done

# -- base: debootstrap of the images' Debian release, imported once --------------------------
phase base
if podman image exists "$BASE_IMAGE"; then
    note "reusing $BASE_IMAGE ($(podman image inspect --format '{{.Created}}' "$BASE_IMAGE"))"
else
    [ "$(id -u)" = 0 ] || die "debootstrap needs root: run as root"
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    rootfs=$(mktemp -d "$WORK/rootfs.XXXXXX")
    note "debootstrap --variant=minbase $SUITE $rootfs $MIRROR (log: $WORK/debootstrap.log)"
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { rm -rf "$rootfs"; die "debootstrap failed: see $WORK/debootstrap.log"; }
    # As in Debian's own images: the release, its updates and security; no package lists.
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
    tar -C "$rootfs" --numeric-owner -c . \
        | podman import --change 'CMD ["/bin/bash"]' \
            --message "debootstrap --variant=minbase $SUITE $MIRROR" - "$BASE_IMAGE" \
            >"$WORK/import.log" 2>&1 || die "podman import failed: see $WORK/import.log"
    rm -rf "$rootfs"
    note "imported $BASE_IMAGE"
fi
podman run --rm "$BASE_IMAGE" sh -c '. /etc/os-release; echo "   runs: $PRETTY_NAME"' \
    || die "a container of $BASE_IMAGE does not start (runtime or ulimits: see $CONTAINERS_CONF)"
phase_done

# -- build: the stack's images on that base ----------------------------------------------------
phase build
# One service per image: mlflow, data and worker share mdd:cpu (podman-compose would build
# it once for each of them, at the same time).
BUILD_SERVICES=(db mlflow)
for service in "${BUILD_SERVICES[@]}"; do
    note "building the image of $service (log: $WORK/build-$service.log)"
    pc "--podman-build-args=${BUILD_MOUNTS[*]}" build "$service" >"$WORK/build-$service.log" 2>&1 \
        || { tail -n 30 "$WORK/build-$service.log" >&2; die "the image of $service did not build"; }
done
podman images --filter reference=mdd-postgres --filter reference=mdd \
    --format '   {{.Repository}}:{{.Tag}}  {{.Size}}  {{.CreatedSince}}'
phase_done

# -- stack: the services in compose.yaml's depends_on order ------------------------------------
wait_healthy() {  # the service's compose health check, run until it passes
    local service=$1 name deadline=$((SECONDS + 300))
    name=$(containers_of "$service")
    until podman healthcheck run "$name" >/dev/null 2>&1; do
        [ "$(podman inspect --format '{{.State.Running}}' "$name")" = true ] \
            || die "$service stopped before it was healthy"
        [ "$SECONDS" -lt "$deadline" ] || die "$service is not healthy after 300 s"
        sleep 3
    done
    note "$service ($name) healthy after $((SECONDS - SERVICE_START)) s"
}
wait_completed() {  # every container of the service exits 0, within the limit
    local service=$1 limit=$2 name state code restarts running deadline=$((SECONDS + $2)) last=$SECONDS
    while :; do
        running=0
        for name in $(containers_of "$service"); do
            read -r state code restarts < <(podman inspect \
                --format '{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}' "$name")
            [ "$restarts" = 0 ] || die "$name failed and was restarted ($restarts times)"
            case $state in
                exited | stopped) [ "$code" = 0 ] || die "$name exited with code $code" ;;
                *) running=$((running + 1)) ;;
            esac
        done
        [ "$running" = 0 ] && break
        [ "$SECONDS" -lt "$deadline" ] || die "$service still running after $limit s"
        if [ "$service" = worker ] && [ $((SECONDS - last)) -ge 60 ]; then
            last=$SECONDS
            note "+$((SECONDS - SERVICE_START)) s: $running worker(s) running; trials: $(trial_counts | tr '\n' ' ')"
        fi
        sleep 5
    done
    note "$service: $(containers_of "$service" | tr '\n' ' ')exited 0 after $((SECONDS - SERVICE_START)) s"
}
trial_counts() {  # study, state, count from Optuna's tables
    podman exec "$(containers_of db)" psql --username "$POSTGRES_USER" --dbname optuna \
        --no-align --tuples-only --field-separator ' ' --command \
        "SELECT s.study_name, t.state, count(*) FROM trials t JOIN studies s USING (study_id)
         GROUP BY s.study_name, t.state ORDER BY s.study_name, t.state" 2>/dev/null || true
}
start_service() {  # service, what it must reach before the next one starts[, replicas]
    local service=$1 until=$2 scale=${3:-1}
    note "starting $service (x$scale)"
    SERVICE_START=$SECONDS
    STACK_UP=1
    pc up --detach --no-deps --scale "$service=$scale" "$service" >>"$WORK/up.log" 2>&1 \
        || die "podman-compose up $service failed: see $WORK/up.log"
    case $until in
        healthy) wait_healthy "$service" ;;
        completed) wait_completed "$service" "$SWEEP_TIMEOUT_S" ;;
    esac
}

phase stack
: >"$WORK/up.log"
start_service db healthy
start_service mlflow healthy
start_service data completed
phase_done

phase sweep
note "$WORKERS workers run $SWEEP (one line a minute)"
start_service worker completed "$WORKERS"
phase_done

# -- check: trial counts in PostgreSQL, runs in MLflow -----------------------------------------
phase check
TRIALS=$(trial_counts)
[ -n "$TRIALS" ] || die "no trials in the optuna database"
note "PostgreSQL, database optuna (study state count):"
printf '%s\n' "$TRIALS" | sed 's/^/     /'
note "trials by worker (Optuna's user attribute worker, host:pid):"
podman exec "$(containers_of db)" psql --username "$POSTGRES_USER" --dbname optuna \
    --no-align --tuples-only --field-separator ' ' --command \
    "SELECT value_json, count(*) FROM trial_user_attributes WHERE key = 'worker'
     GROUP BY value_json ORDER BY value_json" | sed 's/^/     /'
podman exec --interactive --env SMOKE_SWEEP="$SWEEP" --env SMOKE_TRIALS="$TRIALS" \
    "$(containers_of mlflow)" python - <<'PY' || die "the runs do not match the sweep (above)"
"""The sweep's budget against Optuna's trial counts, and the MLflow server's runs against both."""
import collections
import os
import sys

import yaml
from mlflow.tracking import MlflowClient

STATUS_OF_STATE = {"complete": "FINISHED", "pruned": "KILLED"}
sweep = yaml.safe_load(open(os.environ["SMOKE_SWEEP"]))
n_trials = sweep["budget"]["n_trials"]
studies = [f"{sweep['name']}-ipc{ipc}" for ipc in sweep["ipc"]]
counts = collections.defaultdict(collections.Counter)
for line in os.environ["SMOKE_TRIALS"].splitlines():
    study, state, count = line.split()
    counts[study][state] = int(count)
problems = []
if sorted(counts) != sorted(studies):
    problems.append(f"studies in PostgreSQL: {sorted(counts)}, expected {studies}")

client = MlflowClient("http://127.0.0.1:5000")
experiments = [e.experiment_id for e in client.search_experiments()]
runs = client.search_runs(experiments, max_results=5000)
print(f"   MLflow: {len(runs)} runs in {len(experiments)} experiments")
for study in studies:
    done = counts[study]["COMPLETE"] + counts[study]["PRUNED"]
    if done != n_trials or set(counts[study]) - {"COMPLETE", "PRUNED"}:
        problems.append(f"{study}: trials {dict(counts[study])}, expected {n_trials} finished")
    mine = [r for r in runs if r.data.tags.get("mdd.study") == study]
    parents = [r for r in mine if r.info.run_name == study]
    trials = [r for r in mine if "mdd.trial_number" in r.data.tags]
    finals = [r for r in runs if r.data.tags.get("mdd.final") == "true"
              and r.data.tags.get("mlflow.parentRunId") in {p.info.run_id for p in parents}]
    by_state = collections.Counter(r.data.tags.get("mdd.trial_state") for r in trials)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in {t.info.run_id for t in trials}]
    print(f"   {study}: parent {[p.info.status for p in parents]}, {len(trials)} trial runs "
          f"{dict(by_state)} {dict(collections.Counter(r.info.status for r in trials))}, "
          f"{len(children)} stage runs under them, final rerun {[f.info.status for f in finals]}")
    for r in sorted(trials, key=lambda r: int(r.data.tags["mdd.trial_number"])):
        metric = sweep["objectives"][0]["metric"]
        print(f"     {r.info.run_name}: {r.info.status} {r.data.tags.get('mdd.trial_state')} "
              f"{metric}={r.data.metrics.get(metric)}")
    for f in finals:
        print(f"     {f.info.run_name}: {f.info.status} "
              + " ".join(f"{k}={v:.2f}" for k, v in sorted(f.data.metrics.items()) if "acc_mean" in k))
    if [p.info.status for p in parents] != ["FINISHED"]:
        problems.append(f"{study}: parent runs {[p.info.status for p in parents]}, expected one FINISHED")
    # mdd ends a complete trial's run FINISHED, a pruned one's KILLED.
    ended = {r.info.run_name: (r.data.tags.get("mdd.trial_state"), r.info.status) for r in trials}
    wrong = {name: v for name, v in ended.items() if v not in STATUS_OF_STATE.items()}
    if len(trials) != done or wrong:
        problems.append(f"{study}: {len(trials)} trial runs (expected {done}), ended wrongly: {wrong}")
    expected = {"complete": counts[study]["COMPLETE"], "pruned": counts[study]["PRUNED"]}
    if {k: v for k, v in by_state.items() if v} != {k: v for k, v in expected.items() if v}:
        problems.append(f"{study}: trial states in MLflow {dict(by_state)}, in Optuna {expected}")
    if sweep.get("final", {}).get("enabled", True) and [f.info.status for f in finals] != ["FINISHED"]:
        problems.append(f"{study}: final reruns {[f.info.status for f in finals]}, expected one FINISHED")
for problem in problems:
    print(f"   MISMATCH: {problem}")
sys.exit(1 if problems else 0)
PY
note "trial counts and MLflow runs match $SWEEP"
phase_done
