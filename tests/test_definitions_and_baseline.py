"""Each kit function is defined in one place, and the baseline applies each definition once.

``sql/definitions/<name>.sql`` is the one text of ``hardening.<name>``; the versioned files keep
their history, and from 022 on they may not define functions at all. The baseline
(``sql/baseline/021_baseline.sql``) has one section per file it squashes, creates no function
itself and includes each definition at most once, so a new database runs each definition once.
That the baseline ends where the versioned files end is ``tests/test_upgrade_paths.py``.
"""

from __future__ import annotations

import re

from hardening_pipeline.db.baseline import BASELINE_FILE, INCLUDE_LINE, SECTION_MARK, definitions
from hardening_pipeline.db.migration_files import discover_migrations
from hardening_pipeline.db.shipped_functions import definitions_in
from hardening_pipeline.sql_files import BASELINE_DIR, DEFINITIONS_DIR
from tests.test_released_migrations_frozen import on_disk, released

SQUASHED_UP_TO = 21
_ANY_FUNCTION = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+([\w.]+)", re.IGNORECASE)


def baseline_text() -> str:
    return (BASELINE_DIR / BASELINE_FILE).read_text(encoding="utf-8")


def test_every_definition_file_defines_its_own_function_and_only_it() -> None:
    for path in DEFINITIONS_DIR.glob("*.sql"):
        text = path.read_text(encoding="utf-8")
        assert _ANY_FUNCTION.findall(text) == [f"hardening.{path.stem}"], path.name
        assert list(definitions_in(text)) == [path.stem], path.name


def test_every_function_the_migrations_create_has_its_definition() -> None:
    created = {name for f in discover_migrations() for name in definitions_in(f.sql)}
    assert created <= {p.stem for p in DEFINITIONS_DIR.glob("*.sql")}


def test_no_migration_after_the_baseline_defines_a_function() -> None:
    later = [f for f in discover_migrations() if f.number > SQUASHED_UP_TO]
    offending = [f.filename for f in later if _ANY_FUNCTION.search(f.sql)]
    assert not offending, f"{offending}: put each function in sql/definitions/<name>.sql"


def test_the_baseline_has_a_section_per_file_and_runs_each_definition_once() -> None:
    text = baseline_text()
    squashed = [f.filename for f in discover_migrations() if f.number <= SQUASHED_UP_TO]
    assert [m.group(1) for m in SECTION_MARK.finditer(text)] == squashed
    assert not _ANY_FUNCTION.search(text)
    included = INCLUDE_LINE.findall(text)
    assert len(included) == len(set(included))
    # A definition added after the baseline is applied by the repeatable step alone.
    assert set(included) <= {p.name for p in DEFINITIONS_DIR.glob("*.sql")}
    # The repeatable step applies definitions in the order the baseline first needs them, then
    # the later ones by name.
    later = sorted({p.name for p in DEFINITIONS_DIR.glob("*.sql")} - set(included))
    assert [d.filename for d in definitions()] == [f"definitions/{n}" for n in included + later]


def test_the_released_baseline_was_not_edited() -> None:
    assert on_disk(BASELINE_DIR) == released("released_baseline.sha256"), (
        "the released baseline changed: restore it; a new baseline is a new file"
    )
