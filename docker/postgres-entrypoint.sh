#!/bin/bash
# Entrypoint of docker/postgres.Dockerfile: what the official postgres image does on its first
# start, for the settings docker/compose.yaml uses. On an empty PGDATA: initdb with
# POSTGRES_USER as the superuser and POSTGRES_PASSWORD as its password, POSTGRES_DB created,
# then every /docker-entrypoint-initdb.d/*.sql, *.sql.gz and *.sh in name order, with the server
# listening on its Unix socket only (so a TCP health check fails until all of it is done).
# Then, and on every later start, the command (postgres) replaces this script.
set -Eeuo pipefail

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?is not set: the database superuser needs a password}"
    POSTGRES_USER=${POSTGRES_USER:-postgres}
    POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
    echo "postgres-entrypoint: initialising $PGDATA (superuser $POSTGRES_USER, database $POSTGRES_DB)"
    # As in the official image: trust on the container's own socket and loopback (initdb's
    # default), a password (SCRAM) from anywhere else, the server listening on every address.
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --auth-local=trust --auth-host=trust --encoding=UTF8 -D "$PGDATA"
    printf '\nhost all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
    printf "\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"

    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
    psql=(psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc --username "$POSTGRES_USER")
    if [ "$POSTGRES_DB" != postgres ]; then
        "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
    shopt -s nullglob
    for file in /docker-entrypoint-initdb.d/*; do
        # shellcheck disable=SC1090  # the *.sh sourced are the init files mounted at run time
        case "$file" in
            *.sql) echo "postgres-entrypoint: running $file"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$file" ;;
            *.sql.gz) echo "postgres-entrypoint: running $file"; gunzip -c "$file" | "${psql[@]}" --dbname "$POSTGRES_DB" ;;
            *.sh) echo "postgres-entrypoint: running $file"; . "$file" ;;
            *) echo "postgres-entrypoint: ignoring $file" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo "postgres-entrypoint: initialised; starting the server"
fi

exec "$@"
