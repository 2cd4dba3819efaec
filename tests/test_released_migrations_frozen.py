"""Released migrations are frozen: a change to one is a new numbered file, never an edit.

A database records the checksum of every file it applied; editing a released file makes every
database migrated by it "changed" (drift), and the edited text never runs there. What was
released is listed in ``tests/fixtures/released_*.sha256`` (``sha256sum`` format: check by hand
with ``cd sql/migrations && sha256sum -c ../../tests/fixtures/released_migrations.sha256``). Add
a file there when it is released; never change a line.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from hardening_pipeline.db.migrations import EARLIER_REVISIONS, revision_catch_up
from hardening_pipeline.sql_files import MIGRATIONS_DIR, REVISIONS_DIR

FIXTURES = Path(__file__).parent / "fixtures"


def released(listing: str) -> dict[str, str]:
    lines = (FIXTURES / listing).read_text().splitlines()
    return {name: sha for sha, name in (line.split("  ", 1) for line in lines if line)}


def on_disk(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.sql")}


def test_no_released_migration_was_edited() -> None:
    disk = on_disk(MIGRATIONS_DIR)
    edited = sorted(
        n for n, sha in released("released_migrations.sha256").items() if disk.get(n) != sha
    )
    assert not edited, (
        f"released migration(s) {edited} changed or vanished: restore them and put the change "
        "in a new numbered file"
    )


def test_no_catch_up_was_edited_and_every_earlier_text_has_one() -> None:
    catch_ups = released("released_catch_ups.sha256")
    assert on_disk(REVISIONS_DIR) == catch_ups
    needed = {
        revision_catch_up(name, sha).filename
        for name, shas in EARLIER_REVISIONS.items()
        for sha in shas
    }
    assert needed == set(catch_ups)
