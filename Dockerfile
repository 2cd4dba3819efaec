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

# The embedded Postgres used for restore drills refuses to run as root, and nothing here needs it.
# The directories the processes write to are created up front so named volumes mounted on them
# inherit this ownership.
RUN useradd --create-home --uid 1000 dagster \
    && mkdir -p /opt/dagster/app /opt/dagster/home/storage /opt/dagster/reports /opt/dagster/state \
    && chown -R dagster:dagster /opt/dagster/home /opt/dagster/reports /opt/dagster/state

WORKDIR /opt/dagster/app

# The wheel alone, with its runtime dependencies: the migrations, canaries and drill checks are
# inside the package.
COPY --from=build /wheels/ /tmp/wheels/
RUN pip install /tmp/wheels/hardening_pipeline-*.whl \
    && rm -rf /tmp/wheels

# The compose deployment's workspace (webserver and daemon reach the code server over gRPC) and
# its instance config: Postgres storage from DAGSTER_PG_*, read from DAGSTER_HOME.
COPY deploy/workspace.docker.yaml deploy/workspace.docker.yaml
COPY deploy/dagster.yaml /opt/dagster/home/dagster.yaml

# Code stays owned by root: the processes can read it but a compromised run cannot rewrite it.
USER dagster

EXPOSE 3000 4000
CMD ["dagster", "code-server", "start", "-m", "hardening_pipeline.definitions", "-h", "0.0.0.0", "-p", "4000"]
