"""A failing migration names its file, the statement and its line, and how to fix it.

Most server errors carry no position, so the runner executes a file statement by statement (in
its one transaction) and knows which one failed. Each case below makes a real statement fail.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from hardening_pipeline.db.migrations import MigrationFailed, apply_migrations
from hardening_pipeline.db.sql_statements import split_statements


def _folder(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_splitter_keeps_semicolons_inside_literals_bodies_and_comments() -> None:
    sql = (
        "-- header; not a statement\n"
        "SELECT 'a;b', E'it\\'s;', \"odd;name\";\n"
        "/* block; /* nested; */ still; */\n"
        "DO $body$ BEGIN PERFORM 1; END $body$;\n"
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;  -- trailing;\n"
        "\n"
        "SELECT 3"
    )
    statements = split_statements(sql)
    assert [(s.line, s.summary) for s in statements] == [
        (2, "SELECT 'a;b', E'it\\'s;', \"odd;name\""),
        (4, "DO $body$ BEGIN PERFORM 1; END $body$"),
        (5, "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$"),
        (7, "SELECT 3"),
    ]


def test_splitter_runs_every_statement_of_a_file_exactly_once(empty_db_url: str) -> None:
    sql = "CREATE TABLE t (v text);\nINSERT INTO t VALUES ('x;y');\nINSERT INTO t VALUES ($$z;$$);"
    with psycopg.connect(empty_db_url) as conn:
        for statement in split_statements(sql):
            conn.execute(statement.text)
        assert conn.execute("SELECT array_agg(v ORDER BY v) FROM t").fetchone() == (["x;y", "z;"],)


def test_error_without_position_names_the_statement_and_line(empty_db_url, tmp_path) -> None:
    folder = _folder(
        tmp_path,
        {
            "001_ok.sql": "CREATE TABLE public.first (id int);\n",
            "002_broken.sql": (
                "-- creates two tables\n"
                "CREATE TABLE public.second (id int);\n"
                "\n"
                "INSERT INTO public.second\n"
                "    SELECT id FROM public.no_such_table;\n"
            ),
        },
    )
    with pytest.raises(MigrationFailed) as caught:
        apply_migrations(empty_db_url, folder)
    failure = caught.value.failure
    assert (failure.filename, failure.line, failure.statement) == (
        "002_broken.sql",
        5,  # the server points at the missing table, on the statement's second line
        "INSERT INTO public.second",
    )
    assert failure.sqlstate == "42P01"
    assert "expects" in failure.fix
    text = str(caught.value)
    assert text.startswith(
        "migration 002_broken.sql failed and was rolled back; line 5 (INSERT INTO public.second): "
        'relation "public.no_such_table" does not exist. Fix: '
    )
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT to_regclass('public.second')").fetchone() == (None,)


def test_duplicate_object_names_the_clash(empty_db_url, tmp_path) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.widgets (id int)")
    folder = _folder(
        tmp_path, {"001_widgets.sql": "SELECT 1;\nCREATE TABLE public.widgets (x int);"}
    )
    with pytest.raises(MigrationFailed) as caught:
        apply_migrations(empty_db_url, folder)
    failure = caught.value.failure
    assert (failure.line, failure.sqlstate) == (2, "42P07")
    assert "already exists" in failure.message and "rename or drop" in failure.fix


def test_the_servers_hint_is_the_fix_when_it_gives_one(empty_db_url, tmp_path) -> None:
    body = (
        "DO $$ BEGIN RAISE EXCEPTION 'three legacy rows' USING ERRCODE = 'check_violation', "
        "HINT = 'Delete them with the query in the runbook.'; END $$;"
    )
    folder = _folder(tmp_path, {"001_check.sql": body})
    with pytest.raises(MigrationFailed) as caught:
        apply_migrations(empty_db_url, folder)
    assert caught.value.failure.fix == "Delete them with the query in the runbook."
    assert caught.value.failure.line == 1


def test_permission_denied_as_supabase_postgres_says_which_grant(supabase_db_url, tmp_path) -> None:
    # What 002 used to do: hand a public table to a role that may not create in public.
    folder = _folder(
        tmp_path,
        {
            "001_owner.sql": (
                "DO $$ BEGIN\n"
                "    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'probe_owner') THEN\n"
                "        CREATE ROLE probe_owner NOLOGIN;\n"
                "    END IF;\n"
                "END $$;\n"
                "GRANT probe_owner TO postgres;\n"
                "CREATE TABLE public.probe (id int);\n"
                "ALTER TABLE public.probe OWNER TO probe_owner;\n"
            )
        },
    )
    with pytest.raises(MigrationFailed) as caught:
        apply_migrations(supabase_db_url, folder)
    failure = caught.value.failure
    assert (failure.line, failure.sqlstate) == (8, "42501")
    assert failure.statement == "ALTER TABLE public.probe OWNER TO probe_owner"
    assert failure.message == "permission denied for schema public"
    assert "GRANT CREATE ON SCHEMA public" in failure.fix
