"""Is the database still hardened? One named green/red line per guarantee, read from the catalog.

The migrations put the guarantees in place once; this checks they are still there, because any
superuser, console click or hand-written migration can quietly undo one (drop a foreign key,
disable a trigger, add a policy for ``anon``). Each check is a plain function taking a read-only
connection and returning a ``CheckLine`` with the reason and the fix when it is red; its queries
are files in ``sql/status/``. ``model`` holds the report and the runner, the other modules one
family of checks each; importing this package registers them all.

Tables are *found*, not listed: every table with a ``tenant_id`` column, in ``public`` or any other
schema of the app (``db/tenant_tables.py``), is tenant-scoped, so a table added tomorrow is held to
the same rules. Besides the project's own guarantees it covers the RLS-related lints of Supabase's
database linter (splinter): RLS disabled in public, policies on a table whose RLS is off, RLS on
with no policy, mutable function search_path, per-row auth calls in policies (auth_rls_initplan),
multiple permissive policies, security-definer views and SECURITY DEFINER functions anon or
authenticated can call (0028/0029).
Beyond splinter it follows tenant data to where those roles reach it without RLS: views over
tenant tables in any schema without ``security_invoker``, and their privileges on such views,
materialized views and tenant tables' sequences. Where a lint and a project line would report
the same fact, the lint's scope is narrowed so one breakage turns one line red.
"""

from hardening_pipeline.hardening.status import (  # noqa: F401  (registers the checks)
    api_exposure,
    audit,
    definer_functions,
    kit_objects,
    rls,
    schema_keys,
    seals_ddl,
    tenant_policies,
)
from hardening_pipeline.hardening.status.model import (
    CHECKLIST,
    CHECKS,
    CheckContext,
    CheckLine,
    StatusReport,
    describe_database,
    run_checks,
    run_status_check,
)

if [name for name, _, _ in CHECKS] != list(CHECKLIST):
    raise ImportError("every line of CHECKLIST needs exactly one registered status check")

__all__ = [
    "CHECKLIST",
    "CHECKS",
    "CheckContext",
    "CheckLine",
    "StatusReport",
    "describe_database",
    "run_checks",
    "run_status_check",
]
