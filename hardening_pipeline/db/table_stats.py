"""Cheap per-table facts for the UI: how many live rows Postgres's statistics count."""

from __future__ import annotations

from collections.abc import Iterable

from hardening_pipeline.db.connection import connect


def live_row_estimates(url: str, tables: Iterable[str], schema: str = "public") -> dict[str, int]:
    """Postgres's running estimate of live rows per table (``pg_stat_user_tables.n_live_tup``).

    An estimate on purpose: it costs nothing on a table of any size, so it can be read every
    few minutes, where ``count(*)`` would scan the whole table each time. A table Postgres has
    no statistics for yet is left out.
    """
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT relname, n_live_tup FROM pg_stat_user_tables "
            "WHERE schemaname = %s AND relname = ANY(%s)",
            (schema, list(tables)),
        ).fetchall()
    return {row["relname"]: int(row["n_live_tup"]) for row in rows}
