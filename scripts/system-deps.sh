#!/usr/bin/env bash
# Install what mdd's demo and tests use from the system, when this is a Debian
# machine we may install on. `system-deps.sh demo` (make demo): the Fashion-MNIST package
# only. `system-deps.sh test` (make test, the default): also a PostgreSQL server,
# headless Chromium with its WebDriver (the MLflow UI test drives them), and SLURM
# with munge (a one-node cluster for the job-array test).
# Nothing here is required: without it mdd downloads Fashion-MNIST with
# torchvision, and the PostgreSQL and browser tests skip with a message saying why.
set -u
mode=${1:-test}
case "$mode" in demo|test) ;; *) echo "usage: $0 [demo|test]" >&2; exit 2 ;; esac
have_apt() { command -v apt-get >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else return 1; fi; }

missing=()
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
if [ "$mode" = test ]; then
  command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  command -v slurmctld >/dev/null 2>&1 || missing+=(slurm-wlm munge)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if have_apt; then
    echo "installing ${missing[*]} with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
      || { as_root apt-get update -q >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; } \
      || echo "could not install ${missing[*]}: Fashion-MNIST will be downloaded; PostgreSQL, browser and SLURM tests will skip"
  else
    echo "no apt-get: Fashion-MNIST will be downloaded by torchvision; PostgreSQL, browser and SLURM tests will skip"
  fi
fi
[ "$mode" = demo ] && exit 0
# The distributed-sweep tests need a running PostgreSQL server on loopback and a role
# they may create databases with (tests/test_distributed.py reads these names).
if command -v pg_lsclusters >/dev/null 2>&1; then
  read -r version cluster _ < <(pg_lsclusters -h | head -n 1)
  if [ -n "${version:-}" ]; then
    as_root pg_ctlcluster "$version" "$cluster" start 2>/dev/null || true
    as_postgres() { if [ "$(id -u)" = 0 ]; then su postgres -c "$1"; else sudo -n -u postgres sh -c "$1"; fi; }
    for _ in 1 2 3 4 5 6 7 8 9 10; do as_postgres "pg_isready -q" && break; sleep 1; done
    if ! as_postgres "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='mdd_test'\"" 2>/dev/null | grep -q 1; then
      as_postgres "psql -qc \"CREATE ROLE mdd_test LOGIN CREATEDB PASSWORD 'mdd-test-only'\"" \
        || echo "could not create the PostgreSQL test role: the PostgreSQL tests will fail"
    fi
  fi
fi
# A one-node SLURM cluster for the job-array test (tests/test_slurm.py), as root only:
# it runs munged, slurmctld and slurmd, and never touches a slurm.conf it did not write.
if [ "$(id -u)" = 0 ] && command -v slurmctld >/dev/null 2>&1; then
  bash "$(dirname "$0")/../cluster/local-slurm.sh" start >/dev/null \
    || echo "could not start the local SLURM cluster: the SLURM test will skip"
fi
exit 0
