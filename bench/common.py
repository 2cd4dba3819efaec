"""What more than one benchmark needs: the smallest tenant a single-row write can go to."""

from __future__ import annotations

from hardening_pipeline.db.connection import connect
from hardening_pipeline.seed import seed_demo_data


def seed_one_unit(url: str, random_seed: int) -> dict[str, str]:
    """Seed one tenant with one development and one unit, and nothing else; returns their ids
    as text under ``tenant``, ``development`` and ``unit``."""
    seed_demo_data(
        url,
        tenants=1,
        messages_per_unit=0,
        developments_per_tenant=1,
        units_per_development=1,
        onboarding_per_tenant=0,
        random_seed=random_seed,
    )
    with connect(url) as conn:
        return conn.execute(
            "SELECT tenant_id::text AS tenant, development_id::text AS development, "
            "id::text AS unit FROM public.units"
        ).fetchone()
