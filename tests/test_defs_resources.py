"""The Dagster resource that hands TenantScopedClients to ops.

No ``from __future__ import annotations`` here: Dagster resolves the op's annotations.
"""

import dagster as dg

from hardening_pipeline.defs.resources import AppDatabaseResource
from tests.support.db import insert_tenant


def test_dagster_resource_hands_out_clients_traceable_to_the_run(db_url, admin):
    a = insert_tenant(admin, "alpha")
    admin.commit()

    @dg.op
    def file_a_message(context: dg.OpExecutionContext, app_db: AppDatabaseResource) -> str:
        client = app_db.tenant_client(context)
        with client.transaction(a.tenant) as tx:
            tx.insert("onboarding_attempts", {"email": "from-dagster@example.com"})
        return client.actor

    @dg.job
    def onboarding_job():
        file_a_message()

    result = onboarding_job.execute_in_process(
        resources={"app_db": AppDatabaseResource(database_url=db_url)}
    )
    actor = result.output_for_node("file_a_message")
    assert actor == f"service_role:dagster:onboarding_job:{result.run_id}"
    rows = admin.execute(
        "SELECT actor, tenant_id FROM audit_events WHERE table_name = 'onboarding_attempts' "
        "AND after->>'email' = 'from-dagster@example.com'"
    ).fetchall()
    assert rows == [{"actor": actor, "tenant_id": a.tenant}]
