"""Refuse a backup whose schema uses objects of a schema it does not carry.

A backup carries the schemas of ``BACKUP_SCHEMAS`` whole. When an object there uses an object of
another schema (a policy calling ``auth.uid()``, a foreign key to ``auth.users``, a default, a
view, a trigger function or a column type from a schema left out), the backup's schema cannot be
rebuilt anywhere that schema is missing, and the drill finds out weeks later. So the backup reads
the dependencies Postgres records (``pg_depend``: constraints, column defaults, policies,
triggers, views' rewrite rules, column types, functions' argument and result types) before
anything is stored, and refuses with the dependencies and the fix.

Not counted: roles (``pg_shdepend``), system schemas, objects that belong to an extension (the
backup carries extensions, and ``CREATE EXTENSION`` recreates their members wherever they live),
and the kit's own schema ``hardening``, which every backup carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg.rows import tuple_row

from hardening_pipeline.db.tenant_tables import find_tenant_tables
from hardening_pipeline.errors import ConfigError

# Always in a backup, whatever BACKUP_SCHEMAS says (settings.parse_backup_schemas adds it).
ALWAYS_CARRIED = ("hardening",)
# How many dependencies the refusal names; the count says how many more there are.
NAMED_IN_REFUSAL = 3

# The relation a dependent object belongs to, when it is part of one (a default, a policy, a
# trigger, a rewrite rule, a table constraint), or the relation itself.
_OWNER_RELATION = """
CASE d.classid
    WHEN 'pg_catalog.pg_class'::regclass THEN d.objid
    WHEN 'pg_catalog.pg_attrdef'::regclass
        THEN (SELECT a.adrelid FROM pg_catalog.pg_attrdef a WHERE a.oid = d.objid)
    WHEN 'pg_catalog.pg_policy'::regclass
        THEN (SELECT p.polrelid FROM pg_catalog.pg_policy p WHERE p.oid = d.objid)
    WHEN 'pg_catalog.pg_trigger'::regclass
        THEN (SELECT t.tgrelid FROM pg_catalog.pg_trigger t WHERE t.oid = d.objid)
    WHEN 'pg_catalog.pg_rewrite'::regclass
        THEN (SELECT r.ev_class FROM pg_catalog.pg_rewrite r WHERE r.oid = d.objid)
    WHEN 'pg_catalog.pg_constraint'::regclass
        THEN (SELECT NULLIF(c.conrelid, 0) FROM pg_catalog.pg_constraint c WHERE c.oid = d.objid)
END
"""

# The schema of a schema-qualified object (class {c}, oid {o}); NULL for any other kind.
_NAMESPACE = """
CASE {c}
    WHEN 'pg_catalog.pg_class'::regclass
        THEN (SELECT x.relnamespace FROM pg_catalog.pg_class x WHERE x.oid = {o})
    WHEN 'pg_catalog.pg_proc'::regclass
        THEN (SELECT x.pronamespace FROM pg_catalog.pg_proc x WHERE x.oid = {o})
    WHEN 'pg_catalog.pg_type'::regclass
        THEN (SELECT x.typnamespace FROM pg_catalog.pg_type x WHERE x.oid = {o})
    WHEN 'pg_catalog.pg_constraint'::regclass
        THEN (SELECT x.connamespace FROM pg_catalog.pg_constraint x WHERE x.oid = {o})
    WHEN 'pg_catalog.pg_operator'::regclass
        THEN (SELECT x.oprnamespace FROM pg_catalog.pg_operator x WHERE x.oid = {o})
    WHEN 'pg_catalog.pg_collation'::regclass
        THEN (SELECT x.collnamespace FROM pg_catalog.pg_collation x WHERE x.oid = {o})
    WHEN 'pg_catalog.pg_opclass'::regclass
        THEN (SELECT x.opcnamespace FROM pg_catalog.pg_opclass x WHERE x.oid = {o})
    WHEN 'pg_catalog.pg_opfamily'::regclass
        THEN (SELECT x.opfnamespace FROM pg_catalog.pg_opfamily x WHERE x.oid = {o})
    WHEN 'pg_catalog.pg_conversion'::regclass
        THEN (SELECT x.connamespace FROM pg_catalog.pg_conversion x WHERE x.oid = {o})
    WHEN 'pg_catalog.pg_ts_config'::regclass
        THEN (SELECT x.cfgnamespace FROM pg_catalog.pg_ts_config x WHERE x.oid = {o})
    WHEN 'pg_catalog.pg_ts_dict'::regclass
        THEN (SELECT x.dictnamespace FROM pg_catalog.pg_ts_dict x WHERE x.oid = {o})
    WHEN 'pg_catalog.pg_statistic_ext'::regclass
        THEN (SELECT x.stxnamespace FROM pg_catalog.pg_statistic_ext x WHERE x.oid = {o})
END
"""

_IS_EXTENSION_MEMBER = """
EXISTS (SELECT 1 FROM pg_catalog.pg_depend m
        WHERE m.classid = {c} AND m.objid = {o} AND m.deptype = 'e')
"""

# An index is named by its table (a foreign key records both the table and its unique index).
_REFERENCED_TARGET = """
CASE WHEN d.refclassid = 'pg_catalog.pg_class'::regclass
      AND (SELECT x.relkind FROM pg_catalog.pg_class x WHERE x.oid = d.refobjid) IN ('i', 'I')
     THEN (SELECT i.indrelid FROM pg_catalog.pg_index i WHERE i.indexrelid = d.refobjid)
     ELSE d.refobjid
END
"""

# Built from the constant fragments above only; the schemas are bound parameters.
_QUERY = f"""
WITH dep AS (
    SELECT d.classid, d.objid, d.objsubid, d.refclassid,
           {_REFERENCED_TARGET} AS ref_target,
           {_OWNER_RELATION} AS owner_rel
    FROM pg_catalog.pg_depend d
    -- extension membership ('e', 'x') is not a use; 'p' (pinned) rows predate Postgres 15;
    -- an internal part ('i': a foreign key's triggers on the table it references) comes
    -- with the object it belongs to, and goes where that object goes
    WHERE d.deptype NOT IN ('e', 'x', 'p', 'i')
), placed AS (
    SELECT dep.*,
           COALESCE(
               {_NAMESPACE.format(c="'pg_catalog.pg_class'::regclass", o="dep.owner_rel")},
               {_NAMESPACE.format(c="dep.classid", o="dep.objid")}
           ) AS dep_ns,
           {_NAMESPACE.format(c="dep.refclassid", o="dep.ref_target")} AS ref_ns
    FROM dep
)
SELECT DISTINCT
    CASE
        WHEN p.classid = 'pg_catalog.pg_attrdef'::regclass THEN
            'the default of column ' || (SELECT (pg_catalog.pg_identify_object(
                'pg_catalog.pg_class'::regclass, a.adrelid, a.adnum)).identity
                FROM pg_catalog.pg_attrdef a WHERE a.oid = p.objid)
        WHEN p.classid = 'pg_catalog.pg_rewrite'::regclass
             AND (SELECT r.rulename FROM pg_catalog.pg_rewrite r WHERE r.oid = p.objid)
                 = '_RETURN' THEN
            (SELECT CASE x.relkind WHEN 'm' THEN 'materialized view ' ELSE 'view ' END
                    || (pg_catalog.pg_identify_object(
                        'pg_catalog.pg_class'::regclass, x.oid, 0)).identity
             FROM pg_catalog.pg_class x WHERE x.oid = p.owner_rel)
        WHEN p.classid = 'pg_catalog.pg_constraint'::regclass THEN
            (SELECT CASE c.contype WHEN 'f' THEN 'foreign key ' WHEN 'c' THEN 'check constraint '
                                   WHEN 'x' THEN 'exclusion constraint ' ELSE 'constraint ' END
                    || (pg_catalog.pg_identify_object(p.classid, p.objid, 0)).identity
             FROM pg_catalog.pg_constraint c WHERE c.oid = p.objid)
        WHEN p.classid = 'pg_catalog.pg_class'::regclass AND p.objsubid <> 0 THEN
            'column ' || (pg_catalog.pg_identify_object(p.classid, p.objid, p.objsubid)).identity
        ELSE (SELECT o.type || ' ' || o.identity
              FROM pg_catalog.pg_identify_object(p.classid, p.objid, p.objsubid) o)
    END AS dependent,
    (pg_catalog.pg_identify_object(p.refclassid, p.ref_target, 0)).identity AS referenced,
    rn.nspname AS referenced_schema
FROM placed p
JOIN pg_catalog.pg_namespace dn ON dn.oid = p.dep_ns
JOIN pg_catalog.pg_namespace rn ON rn.oid = p.ref_ns
WHERE dn.nspname = ANY(%(schemas)s)
  AND rn.nspname <> ALL(%(carried)s)
  AND rn.nspname NOT IN ('pg_catalog', 'information_schema')
  AND rn.nspname NOT LIKE 'pg\\_%%'
  AND NOT {_IS_EXTENSION_MEMBER.format(c="p.refclassid", o="p.ref_target")}
  AND NOT {_IS_EXTENSION_MEMBER.format(c="p.classid", o="p.objid")}
  AND NOT (p.owner_rel IS NOT NULL
           AND {_IS_EXTENSION_MEMBER.format(c="'pg_catalog.pg_class'::regclass", o="p.owner_rel")})
"""  # noqa: S608


@dataclass(frozen=True)
class ForeignDependency:
    """An object of a backed-up schema and what it uses from schemas the backup leaves out."""

    dependent: str
    uses: tuple[str, ...]
    schemas: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.dependent} uses {_and(self.uses)}"


def foreign_dependencies(
    conn: psycopg.Connection, schemas: Sequence[str]
) -> list[ForeignDependency]:
    """Every object of ``schemas`` that uses an object of a schema the backup does not carry.

    Sorted by the dependent object's description, one entry per dependent object.
    """
    carried = list(dict.fromkeys([*schemas, *ALWAYS_CARRIED]))
    rows = (
        conn.cursor(row_factory=tuple_row)
        .execute(_QUERY, {"schemas": list(schemas), "carried": carried})
        .fetchall()
    )
    uses: dict[str, set[str]] = {}
    needed: dict[str, set[str]] = {}
    for dependent, referenced, schema in rows:
        if dependent is None or referenced is None:  # dropped concurrently
            continue
        uses.setdefault(str(dependent), set()).add(str(referenced))
        needed.setdefault(str(dependent), set()).add(str(schema))
    return [
        ForeignDependency(name, tuple(sorted(uses[name])), tuple(sorted(needed[name])))
        for name in sorted(uses)
    ]


def check_dependencies_carried(conn: psycopg.Connection, schemas: Sequence[str]) -> None:
    """Raise ``ConfigError`` when the backed-up schemas use a schema the backup leaves out."""
    found = foreign_dependencies(conn, schemas)
    if not found:
        return
    missing = sorted({s for dep in found for s in dep.schemas})
    named = "; ".join(str(dep) for dep in _examples(found))
    more = len(found) - NAMED_IN_REFUSAL
    if more > 0:
        named += f"; and {more} more"
    wanted = [s for s in schemas if s not in ALWAYS_CARRIED] + missing
    noun = "schema" if len(missing) == 1 else "schemas"
    raise ConfigError(
        f"the backup would not restore: its schemas use objects of the {noun} "
        f"{_and(missing)}, which BACKUP_SCHEMAS leaves out ({named}); add {_and(missing)} to "
        f"BACKUP_SCHEMAS (BACKUP_SCHEMAS={','.join(wanted)}) and run the backup again, nothing "
        "was stored."
    )


def check_tenant_tables_carried(conn: psycopg.Connection, schemas: Sequence[str]) -> None:
    """Raise ``ConfigError`` when a tenant table lives in a schema the backup leaves out.

    Its rows would be in no backup at all, and a restore of the tenant would miss them.
    """
    left_out = [t for t in find_tenant_tables(conn) if t.schema not in schemas]
    if not left_out:
        return
    missing = list(dict.fromkeys(t.schema for t in left_out))
    wanted = [s for s in schemas if s not in ALWAYS_CARRIED] + missing
    raise ConfigError(
        f"the backup would leave out tenant data: {_and([t.display for t in left_out[:5]])} "
        f"{'is' if len(left_out) == 1 else 'are'} in {_and(missing)}, which BACKUP_SCHEMAS "
        f"leaves out; add {_and(missing)} to BACKUP_SCHEMAS "
        f"(BACKUP_SCHEMAS={','.join(wanted)}) and run the backup again, nothing was stored."
    )


def _examples(found: list[ForeignDependency]) -> list[ForeignDependency]:
    """Up to ``NAMED_IN_REFUSAL`` dependencies, of as many kinds (policy, key, default...) as
    there are, in their sorted order."""
    first_of_kind: dict[str, ForeignDependency] = {}
    for dep in found:
        first_of_kind.setdefault(dep.dependent.split(" ", 1)[0], dep)
    picked = list(first_of_kind.values())[:NAMED_IN_REFUSAL]
    picked += [dep for dep in found if dep not in picked][: NAMED_IN_REFUSAL - len(picked)]
    return sorted(picked, key=found.index)


def _and(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
