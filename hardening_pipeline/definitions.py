"""The Dagster code location: assets, checks, jobs, schedules, sensors and resources."""


import dagster as dg

from hardening_pipeline.defs.assets import application_tables, database_schema
from hardening_pipeline.defs.resources import AppDatabaseResource

defs = dg.Definitions(
    assets=[*application_tables, database_schema],
    resources={"app_db": AppDatabaseResource()},
)
