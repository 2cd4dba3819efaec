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


def test_the_launchpad_config_docs_have_no_rst_markup() -> None:
    """The Launchpad renders resource and config descriptions as Markdown: ``x`` shows as-is."""
    from hardening_pipeline.definitions import defs

    repo = defs.get_repository_def()
    texts = []
    for key, resource in repo.get_top_level_resources().items():
        texts.append((key, resource.description or ""))
        for name, field in (resource.config_schema.config_type.fields or {}).items():
            texts.append((f"{key}.{name}", field.description or ""))
    for job in repo.get_all_jobs():
        for node in job.graph.node_defs:
            schema = getattr(node, "config_schema", None)
            fields = getattr(getattr(schema, "config_type", None), "fields", None) or {}
            texts += [(f"{node.name}.{n}", f.description or "") for n, f in fields.items()]
    assert [where for where, text in texts if "``" in text] == []
