# One image for every Dagster process in docker-compose.yml (code server, webserver, daemon):
# sharing it keeps the Dagster family on exactly the versions pinned in pyproject.toml.
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

# Installed in place (-e) because sql/, tests/ and docs/ live beside the package, not inside it:
# the migrations, canaries and the drill's pytest suite are read from this tree at run time.
# The dev extra brings pytest, which the restore drill runs against the restored database.
COPY pyproject.toml README.md ./
COPY hardening_pipeline/ hardening_pipeline/
RUN pip install -e ".[dev]"

COPY sql/ sql/
COPY tests/ tests/
COPY docs/ docs/
COPY workspace.yaml ./
COPY deploy/workspace.docker.yaml deploy/workspace.docker.yaml
COPY dagster.yaml /opt/dagster/home/dagster.yaml

# Code stays owned by root: the processes can read it but a compromised run cannot rewrite it.
USER dagster

EXPOSE 3000 4000
CMD ["dagster", "code-server", "start", "-m", "hardening_pipeline.definitions", "-h", "0.0.0.0", "-p", "4000"]
