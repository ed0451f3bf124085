# The database of docker/compose.yaml: Debian's PostgreSQL 15 with a small entrypoint
# (postgres-entrypoint.sh) that initialises an empty data folder the way the official postgres
# image does: POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB, then the *.sql and *.sh files
# in /docker-entrypoint-initdb.d, once. Built from Debian itself, so a machine without access
# to an image registry can build it on a base it made with debootstrap (docker/smoke.sh).
#
# Build from the repository root (the build context):
#   docker build -f docker/postgres.Dockerfile -t mdd-postgres:15 .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# Debian's postgresql package would create and start a cluster of its own ("main"): no
# cluster and no service start at install time; the entrypoint makes the only one.
RUN mkdir -p /etc/postgresql-common \
    && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf \
    && printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d \
    && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        postgresql-15 \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql /docker-entrypoint-initdb.d \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 700 /var/lib/postgresql/data

ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data

COPY docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh

# A named volume mounted on PGDATA starts out owned by postgres (the image's folder is).
USER postgres
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
