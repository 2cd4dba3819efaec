"""Realistic demo data, written entirely through TenantScopedClient in service-role mode.

This is the project's own "concrete replacement": the one backend path that writes tenant data
in bulk goes through the wrapper, one transaction per tenant, so every row is scoped and
audited with the actor ``service_role:seed``. The same data feeds the benchmarks and the
evidence run.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hardening_pipeline.db.connection import connect
from hardening_pipeline.db.tenant_scoped_client import TenantScopedClient
from hardening_pipeline.errors import ConfigError

_STREETS = ["Harbour", "Mill", "Orchard", "Station", "Quarry", "Chapel", "Meadow", "Foundry"]
_KINDS = ["View", "Court", "Works", "Yard", "Gardens", "House"]
_SENDERS = ["resident", "property-manager", "concierge", "maintenance", "owner"]
_BODIES = [
    "The heating in the living room has stopped working.",
    "Parcel left at the front desk, please collect.",
    "Water leak under the kitchen sink, urgent.",
    "Reminder: fire alarm test on Thursday at 10:00.",
    "Can we book the communal lounge for Saturday?",
    "The lift on the east side is out of service.",
    "Bin collection moved to Wednesday this week.",
    "Noise complaint about the flat upstairs after midnight.",
]
_ONBOARDING_ERRORS = [
    "smtp timeout sending the invitation email",
    "billing address failed validation",
    "duplicate admin email",
    "identity provider returned 502",
]


@dataclass(frozen=True)
class SeedResult:
    """How much was written and how long it took."""

    tenants: int
    developments: int
    units: int
    messages: int
    onboarding_attempts: int
    seconds: float

    @property
    def rows(self) -> int:
        return (
            self.tenants + self.developments + self.units + self.messages + self.onboarding_attempts
        )


def _next_demo_number(url: str) -> int:
    """Demo slugs continue after the ones already there, so seeding twice never collides."""
    with connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(max(substring(slug FROM '^demo-([0-9]+)$')::int), 0) AS n "
            "FROM public.tenants"
        ).fetchone()
    return int(row["n"]) + 1


def seed_demo_data(
    url: str,
    *,
    tenants: int,
    messages_per_unit: int,
    developments_per_tenant: int = 2,
    units_per_development: int = 5,
    onboarding_per_tenant: int = 4,
    random_seed: int | None = None,
    on_tenant: Callable[[int], None] | None = None,
) -> SeedResult:
    """Create ``tenants`` demo tenants with their developments, units, messages and onboarding."""
    for name, value in [
        ("--tenants", tenants),
        ("--messages-per-unit", messages_per_unit),
        ("--developments-per-tenant", developments_per_tenant),
        ("--units-per-development", units_per_development),
        ("--onboarding-per-tenant", onboarding_per_tenant),
    ]:
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be a whole number of zero or more (got {value!r}).")
    rng = random.Random(random_seed)
    now = datetime.now(UTC)
    client = TenantScopedClient(url, actor="seed", mode="service_role")
    first = _next_demo_number(url)
    totals = dict(developments=0, units=0, messages=0, onboarding=0)
    started = time.perf_counter()
    for i in range(tenants):
        number = first + i
        tenant_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        with client.transaction(tenant_id) as tx:
            tx.insert("tenants", {"slug": f"demo-{number:05d}", "name": f"Demo Estates {number}"})
            developments = [
                {
                    "id": uuid.UUID(int=rng.getrandbits(128), version=4),
                    "name": f"{rng.choice(_STREETS)} {rng.choice(_KINDS)}",
                }
                for _ in range(developments_per_tenant)
            ]
            tx.insert_many("developments", developments)
            units = [
                {
                    "id": uuid.UUID(int=rng.getrandbits(128), version=4),
                    "development_id": d["id"],
                    "label": f"{floor}{letter}",
                }
                for d in developments
                for floor, letter in (
                    (1 + n // 4, "ABCD"[n % 4]) for n in range(units_per_development)
                )
            ]
            tx.insert_many("units", units)
            messages = [
                {
                    "id": uuid.UUID(int=rng.getrandbits(128), version=4),
                    "development_id": u["development_id"],
                    "unit_id": u["id"],
                    "sender": rng.choice(_SENDERS),
                    "body": rng.choice(_BODIES),
                    "created_at": now - timedelta(seconds=rng.randrange(90 * 86400)),
                }
                for u in units
                for _ in range(messages_per_unit)
            ]
            tx.insert_many("messages", messages)
            onboarding = []
            for n in range(onboarding_per_tenant):
                failed = n % 4 == 3  # one in four fails, weeks ago: realistic, not an alarm
                onboarding.append(
                    {
                        "email": f"admin{n}@demo-{number:05d}.example.com",
                        "status": "failed" if failed else "succeeded",
                        "error": rng.choice(_ONBOARDING_ERRORS) if failed else None,
                        "created_at": now - timedelta(days=7 + rng.randrange(60)),
                    }
                )
            tx.insert_many("onboarding_attempts", onboarding)
        totals["developments"] += len(developments)
        totals["units"] += len(units)
        totals["messages"] += len(messages)
        totals["onboarding"] += len(onboarding)
        if on_tenant:
            on_tenant(i + 1)
    return SeedResult(
        tenants=tenants,
        developments=totals["developments"],
        units=totals["units"],
        messages=totals["messages"],
        onboarding_attempts=totals["onboarding"],
        seconds=time.perf_counter() - started,
    )
