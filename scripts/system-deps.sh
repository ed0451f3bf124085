#!/usr/bin/env bash
# Install what mdd's demo and tests use from the system, when this is a Debian
# machine we may install on: the Fashion-MNIST package and a PostgreSQL server.
# Nothing here is required: without it mdd downloads Fashion-MNIST with
# torchvision, and the PostgreSQL tests skip with a message saying why.
set -u
have_apt() { command -v apt-get >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else return 1; fi; }

missing=()
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  if have_apt; then
    echo "installing ${missing[*]} with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
      || { as_root apt-get update -q >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; } \
      || echo "could not install ${missing[*]}: Fashion-MNIST will be downloaded; PostgreSQL tests will skip"
  else
    echo "no apt-get: Fashion-MNIST will be downloaded by torchvision; PostgreSQL tests will skip"
  fi
fi
exit 0
