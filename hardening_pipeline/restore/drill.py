"""The monthly restore drill: prove the newest backup can become a working database again.

Stages, each timed (their sum is the recovery time, RTO):

1. find   - newest backup with a verified manifest (an empty store is a failure);
2. fetch  - download every object and compare its SHA-256 with the manifest, before decrypting;
3. schema - the backup's migrations must all be known to this code, unchanged;
4. restore - a throwaway Postgres (container or embedded, or ``target_dsn``), then the
             backup's own schema (missing roles NOLOGIN, pre-data), every object by COPY on two
             connections before any trigger or key exists, then post-data (keys, indexes,
             triggers, RLS, policies); a key the rows break is reported, not fatal. A backup
             written before backups carried the schema gets its migrations instead, then its
             rows with the audit triggers off, in one transaction;
5. verify  - re-export the restored database with the backup's own exporter: every table's
             row count and SHA-256 must equal the manifest; the restored catalog must equal
             the one recorded at backup time;
6. upgrade - apply this checkout's newer migrations, as a real recovery would;
7. checks  - canaries clean, RLS still isolates, the status check all green;
8. tests   - the drill checks (``restore/drill_checks.py``) against the restored database.

Anything that cannot be verified is a failure, never a pass. The throwaway database is removed
whatever happens. The checks of stages 5 and 7 are in ``restore/drill_verify.py``, the result
they fill in ``restore/drill_result.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from hardening_pipeline.backup.catalog import NoBackupError, StoredBackup, find_backup, list_backups
from hardening_pipeline.backup.crypto import BackupIntegrityError, Keyring
from hardening_pipeline.backup.erased_audit import recorded_hashes
from hardening_pipeline.backup.export import manifest_table_name
from hardening_pipeline.backup.manifest import Manifest, SchemaRole
from hardening_pipeline.backup.store import BackupStore, StoreError
from hardening_pipeline.backup.tenant_key_use import ObjectKeys
from hardening_pipeline.db.connection import connect, drop_database, recreate_database
from hardening_pipeline.db.ddl_recording import ddl_recording_paused
from hardening_pipeline.db.migrations import MIGRATIONS_DIR, apply_migrations, discover_migrations
from hardening_pipeline.db.pg_installs import major_of
from hardening_pipeline.db.tenant_resolver import sync_tenant_policies
from hardening_pipeline.db.throwaway import throwaway_postgres
from hardening_pipeline.errors import ConfigError, HardeningError
from hardening_pipeline.hardening.seals.window import restore_high_water
from hardening_pipeline.restore.archive import ArchiveError, TocEntry, open_archive
from hardening_pipeline.restore.binding import (
    SourceIdentity,
    foreign_backup_sentence,
    is_of,
)
from hardening_pipeline.restore.bulk_load import (
    DeferredKeys,
    UserTriggers,
    load_into_empty,
    reset_sequences,
    restore_sequence_values,
)
from hardening_pipeline.restore.drill_result import DrillResult, Invariant, Stages
from hardening_pipeline.restore.drill_verify import (
    check_canaries,
    check_rls_isolation,
    compare_catalog,
    compare_with_manifest,
    rebuild_invariants,
    run_drill_tests,
    status_invariants,
)
from hardening_pipeline.restore.erased_tenants import prove_unreadable
from hardening_pipeline.restore.owners import OwnerRefused, OwnerSessions
from hardening_pipeline.restore.reader import (
    FetchedObject,
    TableReader,
    fetched_backup,
    read_schema_sections,
)
from hardening_pipeline.restore.schema import SchemaRebuild, SchemaRestore, run_workers
from hardening_pipeline.restore.sessions import (
    OwnerConnections,
    OwnerLogins,
    create_missing_roles,
)
from hardening_pipeline.restore.verifier import allow_audit_probes, verifier_login

DRILL_DATABASE = "restore_drill"
# The throwaway server's superuser: a name no backup's role has (Supabase's tables are owned by
# ``postgres``, which must come back as an ordinary role, not as the server's superuser).
DRILL_SUPERUSER = "hardening_restore_admin"
# Restored as-is (not re-created by the migration runner) so the record matches the backup.
MIGRATIONS_TABLE = "hardening.schema_migrations"
# Tables the migrations fill in themselves; the backup's rows replace theirs.
MIGRATION_FILLED_TABLES = (
    MIGRATIONS_TABLE,
    "hardening.job_locks",
    "hardening.service_role_mode",
    "hardening.managed_tables",
    "hardening.adoption_log",
    "hardening.tenant_resolver",
    "hardening.ddl_recording_installs",
)


class DrillFailure(HardeningError):
    """A stage of the drill failed; the message says which and why."""


ERASED_UNREADABLE = "erased tenants' objects cannot be decrypted"


def check_schema_known(manifest: Manifest, directory: Path = MIGRATIONS_DIR) -> None:
    """Refuse a backup whose migrations this code does not have (or has in another version)."""
    known = {f.filename: f.sha256 for f in discover_migrations(directory)}
    unknown = [m for m in manifest.schema.applied_migrations if m not in known]
    if unknown:
        raise DrillFailure(
            f"backup {manifest.backup_id} was made by a newer schema ({', '.join(unknown)} "
            "unknown here); restore it with the project version that wrote it."
        )
    last = manifest.schema.last_migration
    if known.get(last) != manifest.schema.last_migration_sha256:
        raise DrillFailure(
            f"backup {manifest.backup_id} recorded {last} with a different checksum than this "
            "checkout's file; restore it with the project version that wrote it."
        )


def restore_backup_into(
    url: str,
    store: BackupStore,
    backup: StoredBackup,
    keyring: Keyring,
    *,
    keys: ObjectKeys | None = None,
) -> int:
    """Apply the backup's migrations to the empty database at ``url`` and load every object.

    Returns the number of rows loaded. One transaction: any integrity error leaves nothing.
    ``keys``: the caller's, when it already read the ledger (and checked it) for this backup.
    """
    manifest = backup.manifest
    assert manifest is not None
    object_keys = keys or ObjectKeys(store, manifest, keyring)
    apply_migrations(url, only=set(manifest.schema.applied_migrations), applied_by="restore")
    with (
        fetched_backup(store, manifest, backup.folder) as fetched,
        connect(url, client_encoding="UTF8") as conn,
    ):
        tables = [t.name for o in manifest.objects for t in o.tables]
        # The rebuild's own DDL is not a change to the backed-up data: not on the record.
        with ddl_recording_paused(conn):
            triggers = UserTriggers.read(conn, tables)
            keys = DeferredKeys.read(conn, tables)
            triggers.disable(conn)
            keys.drop(conn)
            # Tenant objects first (they hold each tenant's parent rows), the shared one last.
            ordered = sorted(manifest.objects, key=lambda o: o.tenant_id is None)
            for entry in ordered:
                reader = TableReader(fetched[entry.name], manifest, object_keys.for_object(entry))
                load_into_empty(conn, iter(reader), replace=MIGRATION_FILLED_TABLES)
            keys.rebuild(conn)
            reset_sequences(conn, tables)
            restore_high_water(conn)
            triggers.restore(conn)
            sync_tenant_policies(conn)
        conn.commit()
    return sum(t.row_count for o in manifest.objects for t in o.tables)


# Objects loaded at once by the schema-carrying restore, one connection each (as pg_restore -j).
RESTORE_WORKERS = 2


@dataclass
class AppRestore:
    """What restoring a schema-carrying backup did: rows loaded and how the schema came back."""

    rows: int
    rebuild: SchemaRebuild


def _table_owners(conn: psycopg.Connection, schemas: Sequence[str]) -> dict[str, str]:
    """Each restored table's owner, keyed as the manifest names tables."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname, pg_catalog.pg_get_userbyid(c.relowner) AS owner "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%s)",
        (list(schemas),),
    ).fetchall()
    return {manifest_table_name(r["nspname"], r["relname"]): r["owner"] for r in rows}


def _load_and_index(
    fetched: dict[str, FetchedObject],
    manifest: Manifest,
    keys: ObjectKeys,
    schema: SchemaRestore,
    rebuild: SchemaRebuild,
    workers: int,
) -> None:
    """COPY every object in on ``workers`` threads, building each table's keys and indexes as
    soon as its last object is in, the way ``pg_restore -j`` schedules.

    The tables have no keys or triggers while rows go in, so objects do not depend on each
    other. Every table is loaded in a session of its owner: its defaults and CHECK functions
    run with the owner's rights, as on the source. A table whose rows fail (decryption, a
    CHECK) fails the restore of this throwaway database.
    """
    assert manifest.app_schema is not None
    with schema.sessions.admin() as conn:
        owners = _table_owners(conn, manifest.app_schema.schemas)
    remaining = Counter(t.name for o in manifest.objects for t in o.tables)
    waiting: dict[str, list[TocEntry]] = defaultdict(list)
    after_load: list[TocEntry] = []
    for entry in schema.keys:
        table = schema.table_of(entry)
        (waiting[table] if table in remaining else after_load).append(entry)
    ready: deque[TocEntry] = deque()
    pending = sorted(manifest.objects, key=lambda o: -o.plaintext_bytes)
    cond = threading.Condition()
    state = {"loading": 0}
    failures: list[BaseException] = []

    def next_task() -> tuple[str, Any] | None:
        with cond:
            while not failures:
                if ready:
                    return "key", ready.popleft()
                if pending:
                    state["loading"] += 1
                    return "load", pending.pop(0)
                if not state["loading"]:
                    return None
                cond.wait()
            return None

    def load(conns: OwnerConnections, item: Any) -> None:
        for table, chunks in TableReader(fetched[item.name], manifest, keys.for_object(item)):
            owner = owners.get(table.name)
            if owner is None:
                raise DrillFailure(
                    f"backup object {item.name} holds rows of {table.name}, which the "
                    "backup's schema does not create."
                )
            conn = conns.get(owner)
            with conn.transaction():
                load_into_empty(conn, iter([(table, chunks)]), queued=True)

    def loop() -> None:
        conns = schema.connections()
        try:
            while (task := next_task()) is not None:
                kind, item = task
                if kind == "key":
                    schema.build(conns, item, rebuild)
                    continue
                load(conns, item)
                with cond:
                    state["loading"] -= 1
                    for table in item.tables:
                        remaining[table.name] -= 1
                        if remaining[table.name] == 0:
                            ready.extend(waiting.pop(table.name, []))
                    cond.notify_all()
        except BaseException as exc:  # re-raised in the caller's thread
            with cond:
                failures.append(exc)
                cond.notify_all()
        finally:
            conns.close()

    run_workers(loop, workers, failures)
    leftovers = [e for entries in waiting.values() for e in entries] + after_load
    schema.build_all(leftovers, rebuild, workers)


# Owns the drill's database, so what ``pg_database_owner`` owned on the source (the ``public``
# schema's grants) runs as an ordinary role, never as the target's superuser.
DRILL_DATABASE_OWNER = "hardening_restore_owner"


def own_database(url: str, owner: str = DRILL_DATABASE_OWNER) -> None:
    """Hand the (empty) database at ``url`` to ``owner``, an ordinary NOLOGIN role."""
    with connect(url, autocommit=True) as conn:
        create_missing_roles(conn, [SchemaRole(owner, bypassrls=False)])
        conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(conn.info.dbname), sql.Identifier(owner)
            )
        )


def restore_app_backup_into(
    url: str,
    store: BackupStore,
    backup: StoredBackup,
    keyring: Keyring,
    *,
    workers: int = RESTORE_WORKERS,
    keys: ObjectKeys | None = None,
) -> AppRestore:
    """Rebuild a schema-carrying backup in the empty database at ``url``, pg_restore's way.

    ``url`` reaches the target as a superuser. Roles the schema needs, pre-data, rows
    (``workers`` objects at once), sequences, then post-data; the backup's SQL and the app's
    code run in sessions of their owners only. A constraint the rows break is reported in the
    result, not raised. ``keys`` as for ``restore_backup_into``.
    """
    manifest = backup.manifest
    assert manifest is not None and manifest.app_schema is not None
    keys = keys or ObjectKeys(store, manifest, keyring)
    own_database(url)
    with fetched_backup(store, manifest, backup.folder) as fetched:
        sections = read_schema_sections(fetched[manifest.app_schema.name], manifest, keys.shared)
        roles = [r.name for r in manifest.app_schema.roles]
        with open_archive(sections, manifest.app_schema.pg_dump_version, roles) as archive:
            logins = OwnerLogins(url, DRILL_DATABASE_OWNER)
            schema = SchemaRestore(logins, archive, manifest.app_schema)
            try:
                rebuild = schema.prepare()
                if rebuild.failed:
                    raise DrillFailure(
                        f"the backup's schema could not be rebuilt ({len(rebuild.failed)} "
                        f"object(s) failed, first: {rebuild.failed[0]}); restore into a server "
                        "with the extensions and version the app needs (--target-dsn)."
                    )
                _load_and_index(fetched, manifest, keys, schema, rebuild, workers)
                with connect(url) as conn:
                    conn.execute("SET search_path = pg_catalog, pg_temp")
                    reset_sequences(conn, [t.name for o in manifest.objects for t in o.tables])
                    restore_sequence_values(conn, manifest.app_schema.sequences)
                    # Ids burned before the backup must not be handed out again.
                    restore_high_water(conn)
                    conn.commit()
                schema.finish(rebuild, workers)
            finally:
                schema.close()
    return AppRestore(sum(t.row_count for o in manifest.objects for t in o.tables), rebuild)


def upgrade_as_owner(url: str) -> list[str]:
    """Apply this checkout's newer migrations logged in as the owner of the migration record.

    The restored copy's kit functions are the backup's: a migration that calls one runs it with
    that owner's rights, not the drill server's superuser's.
    """
    with connect(url) as conn:
        row = conn.execute(
            "SELECT pg_catalog.pg_get_userbyid(c.relowner) AS owner, c.relkind "
            "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'hardening' AND c.relname = 'schema_migrations'"
        ).fetchone()
    if row is None or row["relkind"] != "r":
        raise DrillFailure(
            "the restored database has no migration record table (hardening.schema_migrations); "
            "the backup is not of a database this kit migrated."
        )
    owner = sql.Identifier(row["owner"])
    with connect(url, autocommit=True) as conn:
        database = sql.Identifier(conn.info.dbname)
        # The runner creates its schema "if not exists", which asks for CREATE on the database.
        conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(database, owner))
        # A changed definition of a function the audit owner owns (the capture, in a backup
        # taken before it changed) is applied as the audit owner: the migration role holds it
        # on the source while it migrates, so it holds it here while this upgrade runs.
        lent = conn.execute(_NOT_YET_A_MEMBER, {"owner": row["owner"]}).fetchone()["lend"]
        if lent:
            conn.execute(sql.SQL("GRANT hardening_audit_owner TO {}").format(owner))
    owners = OwnerSessions(url)
    try:
        upgraded = apply_migrations(owners.url(row["owner"]), applied_by="restore drill upgrade")
        return upgraded.applied + upgraded.definitions
    finally:
        owners.close()
        with connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("REVOKE CREATE ON DATABASE {} FROM {}").format(database, owner))
            if lent:
                conn.execute(sql.SQL("REVOKE hardening_audit_owner FROM {}").format(owner))


# The restored migration role is not a member of the audit owner (which exists).
_NOT_YET_A_MEMBER = """
    SELECT pg_catalog.to_regrole('hardening_audit_owner') IS NOT NULL
           AND NOT pg_catalog.pg_has_role(%(owner)s, 'hardening_audit_owner', 'MEMBER') AS lend
"""


def _server_version(url: str) -> str:
    with connect(url) as conn:
        return str(conn.execute("SELECT current_setting('server_version') AS v").fetchone()["v"])


def _versions_note(source: str, target: str) -> str:
    note = f"PostgreSQL {target}; source {source}"
    if major_of(target) != major_of(source):
        note += f", no PostgreSQL {major_of(source)} server here, so the newest"
    return note


@contextlib.contextmanager
def _target_database(
    target_dsn: str | None, source: str, extensions: Sequence[str] = ()
) -> Iterator[tuple[str, str]]:
    """Yield (url of an empty database, description); the throwaway server is always removed.

    The throwaway server is of the source's major where one is installed, else the newest:
    a dump loads into its own major or a newer one, never into an older one.
    """
    if target_dsn:
        target = _server_version(target_dsn)
        if major_of(target) < major_of(source):
            raise ConfigError(
                f"the drill target (--target-dsn or HARDENING_DRILL_TARGET_URL) runs PostgreSQL "
                f"{target}, older than the backup's source PostgreSQL {source}; point it at a "
                f"PostgreSQL {major_of(source)} or newer, or leave it unset to restore into a "
                "throwaway Postgres."
            )
        url = recreate_database(target_dsn, DRILL_DATABASE)
        try:
            yield (
                url,
                f"the provided Postgres (database restore_drill; {_versions_note(source, target)})",
            )
        finally:
            drop_database(target_dsn, DRILL_DATABASE)
        return
    with throwaway_postgres(
        major=major_of(source) or None, superuser=DRILL_SUPERUSER, extensions=extensions
    ) as server_url:
        target = _server_version(server_url)
        description = f"a throwaway Postgres ({_versions_note(source, target)})"
        yield recreate_database(server_url, DRILL_DATABASE), description


def run_restore_drill(
    store: BackupStore,
    keyring: Keyring,
    *,
    backup_id: str | None = None,
    target_dsn: str | None = None,
    run_tests: bool = True,
    on_stage: Callable[[str, str], None] | None = None,
    now: datetime | None = None,
    source: SourceIdentity | None = None,
) -> DrillResult:
    """Run the whole drill; never raises for a drill failure, returns a failed result instead.

    ``source`` is the configured database: the newest backup must be of it (``restore/binding.py``)
    unless ``backup_id`` names one explicitly.
    """
    result = DrillResult(started_at=now or datetime.now(UTC))
    stages = Stages(result, on_stage)
    try:
        with stages.stage("find"):
            catalog = list_backups(store, keyring, now=result.started_at)
            backup = find_backup(catalog, backup_id, newest_must_be_valid=True)
            manifest = backup.manifest
            assert manifest is not None
            result.backup_id = manifest.backup_id
            result.backup_created_at = manifest.created_at
            result.location = store.describe() + "/" + backup.folder.rstrip("/")
            if backup_id is None and source is not None and not is_of(manifest.database, source):
                raise DrillFailure(
                    foreign_backup_sentence(manifest.backup_id, manifest.database, source)
                )
            # Tenants erased since this backup: restore the others, prove the erased unreadable.
            copy = source.ledger_copy if source else None
            keys = ObjectKeys(store, manifest, keyring, catalog=catalog, database_copy=copy)
            erased = [(o, e) for o in manifest.objects if (e := keys.erased(o)) is not None]
            erased_rows = recorded_hashes(store, keys.erased_tenants())
            if erased:
                proof = prove_unreadable(store, backup.folder, keys, erased)
                result.invariants.append(Invariant(ERASED_UNREADABLE, *proof))
                gone = {o.name for o, _ in erased}
                manifest = dataclasses.replace(
                    manifest, objects=tuple(o for o in manifest.objects if o.name not in gone)
                )
                backup = dataclasses.replace(backup, manifest=manifest)
        with stages.stage("schema"):
            check_schema_known(manifest)
        extensions = [e.name for e in manifest.app_schema.extensions] if manifest.app_schema else []
        with _target_database(target_dsn, manifest.database.server_version, extensions) as (
            url,
            description,
        ):
            result.target = description
            with stages.stage("restore"):
                if manifest.app_schema is None:
                    # Written before backups carried the schema: the migrations rebuild it.
                    result.rows_restored = restore_backup_into(
                        url, store, backup, keyring, keys=keys
                    )
                else:
                    restored = restore_app_backup_into(url, store, backup, keyring, keys=keys)
                    result.rows_restored = restored.rows
                    result.invariants.extend(rebuild_invariants(restored.rebuild))
            # Everything after the restore reads or writes through the backup's code (views,
            # triggers, policies, functions): none of it in a superuser's session.
            with verifier_login(url) as checker:
                with stages.stage("verify"):
                    result.invariants.extend(compare_with_manifest(checker, manifest, keys))
                    if manifest.app_schema is not None:
                        result.invariants.append(compare_catalog(checker, manifest.app_schema))
                with stages.stage("upgrade"):
                    # Newer migrations of this checkout, applied after the digests were
                    # compared: proves the backup is usable with the code that would restore
                    # it today. As the role that owns the migration record, logged in as it.
                    result.upgraded_with = (
                        upgrade_as_owner(url)
                        if manifest.app_schema is not None
                        # Built by this checkout's own migrations, no backup's code in it.
                        else apply_migrations(url, applied_by="restore drill upgrade").applied
                    )
                with stages.stage("checks"):
                    result.invariants.append(check_canaries(checker))
                    result.invariants.append(check_rls_isolation(checker, manifest))
                    source_red = (
                        manifest.app_schema.source_red_lines if manifest.app_schema else None
                    )
                    result.invariants.extend(status_invariants(checker, source_red, erased_rows))
                if run_tests:
                    with stages.stage("tests"):
                        allow_audit_probes(url)
                        passed, failed, output = run_drill_tests(checker)
                        result.tests_passed, result.tests_failed = passed, failed
                        result.tests_output = output
    except ConfigError:
        # A wrong key or a target older than the source: the user's to fix, exit 2.
        raise
    except (
        NoBackupError,
        BackupIntegrityError,
        DrillFailure,
        StoreError,
        ArchiveError,
        OwnerRefused,
    ) as exc:
        result.failure = str(exc)
    except HardeningError as exc:
        result.failure = f"{type(exc).__name__}: {exc}"
    except psycopg.Error as exc:
        result.failure = f"database error during the drill: {str(exc).strip().splitlines()[0]}"
    if result.failure is None and not run_tests:
        result.failure = "the drill tests were not run, so the restore could not be verified"
    return result
