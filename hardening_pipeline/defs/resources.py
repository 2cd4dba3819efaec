"""Dagster resources shared by every op: thin handles over the plain-Python core."""

import dagster as dg

from hardening_pipeline.db.connection import resolve_database_url
from hardening_pipeline.settings import Settings, load_settings


class AppDatabaseResource(dg.ConfigurableResource):
    """The multi-tenant application database being hardened.

    Left empty, it follows HARDENING_DATABASE_URL, read when a run starts (never at import), and
    falls back to the embedded database in ``.hardening/`` like the CLI does.
    """

    database_url: str | None = None

    def settings(self) -> Settings:
        settings = load_settings()
        if self.database_url:
            from dataclasses import replace

            settings = replace(settings, database_url=self.database_url)
        return settings

    def url(self) -> str:
        return resolve_database_url(self.settings())
