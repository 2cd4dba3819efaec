"""Drill checks that fit any app: probe rows built from the restored catalog, probe tenants.

An app's messages table is not the demo's: here its sender is ``sender_id``, a key to the
app's own residents of the same tenant, and it has more NOT NULL columns without defaults (an
enum, a number, a date, a flag, a short code). The probe rows must fill each of them with a value
that fits, or say which column of which table they could not fill.

A database with fewer than two tenants (a new install, a single customer) is checked with
synthetic probe tenants inside the drill's own copy, and leaves no probe row behind.
"""

from __future__ import annotations

import pytest
from psycopg import sql

from hardening_pipeline.backup.crypto import Keyring
from hardening_pipeline.backup.nightly import run_backup
from hardening_pipeline.backup.store import FileStore
from hardening_pipeline.restore.drill import run_restore_drill
from hardening_pipeline.restore.drill_checks import DRILL_CHECKS
from hardening_pipeline.seed import seed_demo_data
from tests.support.db import admin_connect
from tests.test_drill_checks import breakage as run_sql
from tests.test_drill_checks import outcomes

# The demo's messages table turned into an app's: sender -> sender_id (a key to a resident of
# the same tenant), and required columns of several types, none with a default.
SENDER_ID_APP = """
SELECT set_config('app.actor', 'test:app-schema', false);
CREATE TYPE public.channel AS ENUM ('sms', 'email');
CREATE TABLE public.residents (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL REFERENCES public.tenants (id),
    full_name text NOT NULL,
    CONSTRAINT residents_id_tenant_key UNIQUE (id, tenant_id)
);
INSERT INTO public.residents (tenant_id, full_name)
    SELECT id, 'Resident of ' || slug FROM public.tenants;
ALTER TABLE public.messages
    ADD COLUMN sender_id uuid,
    ADD COLUMN channel public.channel NOT NULL DEFAULT 'email',
    ADD COLUMN priority smallint NOT NULL DEFAULT 3 CHECK (priority >= 0),
    ADD COLUMN sent_on date NOT NULL DEFAULT current_date,
    ADD COLUMN urgent boolean NOT NULL DEFAULT false,
    ADD COLUMN ref varchar(8) NOT NULL DEFAULT 'm';
UPDATE public.messages m SET sender_id = r.id
    FROM public.residents r WHERE r.tenant_id = m.tenant_id;
ALTER TABLE public.messages
    ALTER COLUMN sender_id SET NOT NULL,
    ADD CONSTRAINT messages_sender_resident_fkey FOREIGN KEY (sender_id, tenant_id)
        REFERENCES public.residents (id, tenant_id),
    DROP COLUMN sender,
    ALTER COLUMN channel DROP DEFAULT,
    ALTER COLUMN priority DROP DEFAULT,
    ALTER COLUMN sent_on DROP DEFAULT,
    ALTER COLUMN urgent DROP DEFAULT,
    ALTER COLUMN ref DROP DEFAULT;
"""

PROBED = ("tenants", "developments", "units", "messages", "residents", "onboarding_attempts")


def red(results: dict[str, tuple[bool, str]]) -> dict[str, str]:
    return {name: detail for name, (passed, detail) in results.items() if not passed}


def snapshot(url: str) -> dict[str, list]:
    """Every row of the probed tables, so a check that leaves a row behind is seen."""
    with admin_connect(url) as conn:
        present = [
            t for t in PROBED if conn.execute("SELECT to_regclass(%s) AS r", (t,)).fetchone()["r"]
        ]
        return {
            t: sorted(
                str(r) for r in conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(t)))
            )
            for t in present
        }


def drop_message_unit_keys(url: str) -> None:
    """Drop every key of messages that involves unit_id: a cross-tenant message gets through."""
    with admin_connect(url) as conn:
        keys = conn.execute(
            "SELECT c.conname FROM pg_constraint c WHERE c.conrelid = 'public.messages'::regclass "
            "AND c.contype = 'f' AND (SELECT attnum FROM pg_attribute WHERE attrelid = c.conrelid "
            "AND attname = 'unit_id') = ANY (c.conkey)"
        ).fetchall()
    assert keys
    drop = sql.SQL("ALTER TABLE messages DROP CONSTRAINT {}")
    run_sql(url, *(drop.format(sql.Identifier(r["conname"])) for r in keys))


@pytest.fixture
def sender_id_app(db_url: str) -> str:
    seed_demo_data(db_url, tenants=2, messages_per_unit=1, units_per_development=2, random_seed=8)
    run_sql(db_url, SENDER_ID_APP)
    return db_url


# Item 8: probe rows from the restored table's real columns.


def test_every_check_passes_on_an_app_whose_sender_is_sender_id(sender_id_app: str) -> None:
    before = snapshot(sender_id_app)
    results = outcomes(sender_id_app)
    assert red(results) == {}
    assert snapshot(sender_id_app) == before


def test_the_cross_tenant_probe_still_refutes_a_missing_key_on_that_app(
    sender_id_app: str,
) -> None:
    drop_message_unit_keys(sender_id_app)
    failed = red(outcomes(sender_id_app))
    assert list(failed) == ["cross_tenant_message_is_refused"], failed
    assert "was accepted" in failed["cross_tenant_message_is_refused"]


def test_a_column_no_probe_can_fill_is_named_in_a_red(sender_id_app: str) -> None:
    run_sql(
        sender_id_app,
        "ALTER TABLE public.messages ADD COLUMN pin point NOT NULL DEFAULT point(0, 0)",
        "ALTER TABLE public.messages ALTER COLUMN pin DROP DEFAULT",
    )
    failed = red(outcomes(sender_id_app))
    assert list(failed) == ["cross_tenant_message_is_refused"], failed
    detail = failed["cross_tenant_message_is_refused"]
    assert "column pin (point) of public.messages" in detail, detail
    assert "could not check" not in detail


def test_a_probe_row_a_check_constraint_refuses_is_a_red_that_names_it(sender_id_app: str) -> None:
    # The probe on the tenant's own unit must be accepted before a refusal on another tenant's
    # unit counts; a row the table refuses anyway is a red naming why, not a pass.
    run_sql(
        sender_id_app,
        "ALTER TABLE public.messages ADD CONSTRAINT ref_is_x CHECK (ref = 'x') NOT VALID",
    )
    failed = red(outcomes(sender_id_app))
    assert list(failed) == ["cross_tenant_message_is_refused"], failed
    assert "on its own unit was refused" in failed["cross_tenant_message_is_refused"]
    assert '"ref_is_x"' in failed["cross_tenant_message_is_refused"]


def test_a_parent_row_no_probe_can_build_is_named_in_a_red(db_url: str) -> None:
    # No tenants: the probe tenants need a resident each, and residents has a column no probe
    # can fill; the red names the resident's column and the message column that needed it.
    run_sql(
        db_url,
        SENDER_ID_APP,
        "ALTER TABLE public.residents ADD COLUMN home point NOT NULL",
    )
    detail = red(outcomes(db_url))["each_tenant_sees_only_its_rows"]
    assert "column home (point) of public.residents" in detail, detail
    assert "sender_id of public.messages" in detail, detail


# Item 9: fewer than two tenants.


@pytest.mark.parametrize("tenants", [0, 1])
def test_fewer_than_two_tenants_are_checked_with_probe_tenants(db_url: str, tenants: int) -> None:
    if tenants:
        seed_demo_data(db_url, tenants=tenants, messages_per_unit=1, random_seed=9)
    before = snapshot(db_url)
    results = outcomes(db_url)
    assert red(results) == {}
    assert "probe tenant" in results["each_tenant_sees_only_its_rows"][1]
    assert "probe tenant" in results["cross_tenant_message_is_refused"][1]
    assert snapshot(db_url) == before, "a probe row was left behind"


@pytest.mark.parametrize("tenants", [0, 1])
def test_probe_tenants_still_catch_a_leak(db_url: str, tenants: int) -> None:
    if tenants:
        seed_demo_data(db_url, tenants=tenants, messages_per_unit=1, random_seed=9)
    run_sql(
        db_url,
        "ALTER TABLE messages NO FORCE ROW LEVEL SECURITY",
        "ALTER TABLE messages DISABLE ROW LEVEL SECURITY",
    )
    assert set(red(outcomes(db_url))) == {
        "each_tenant_sees_only_its_rows",
        "no_tenant_context_sees_nothing",
    }


@pytest.mark.parametrize("tenants", [0, 1])
def test_probe_tenants_still_catch_a_missing_unit_key(db_url: str, tenants: int) -> None:
    if tenants:
        seed_demo_data(db_url, tenants=tenants, messages_per_unit=1, random_seed=9)
    drop_message_unit_keys(db_url)
    failed = red(outcomes(db_url))
    assert list(failed) == ["cross_tenant_message_is_refused"], failed
    assert "was accepted" in failed["cross_tenant_message_is_refused"]


def test_probe_tenants_are_built_from_the_apps_columns_too(db_url: str) -> None:
    run_sql(db_url, SENDER_ID_APP)
    before = snapshot(db_url)
    assert red(outcomes(db_url)) == {}
    assert snapshot(db_url) == before


def test_a_single_tenant_backup_passes_the_whole_drill(db_url: str, tmp_path) -> None:
    seed_demo_data(db_url, tenants=1, messages_per_unit=1, random_seed=10)
    store, keyring = FileStore(tmp_path / "store"), Keyring(bytes(range(32)))
    run_backup(db_url, store, keyring)
    result = run_restore_drill(store, keyring)
    assert result.passed, (result.failure, result.invariants, result.tests_output)
    assert result.tests_failed == 0 and result.tests_passed == len(DRILL_CHECKS)
