"""The erasure certificate ``erase-tenant`` writes into the evidence: what an auditor keeps."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hardening_pipeline.backup.erasure_records import ERASE_COMMAND
from hardening_pipeline.reports import report_stamp


@dataclass
class ErasureCertificate:
    """Which key, which backups, destroyed when, and where; and whether the database still
    holds an old row version with the key in it."""

    tenant_id: str
    key_id: str
    erased_at: str
    backups: list[str]
    ledger_version: int
    store_copy: str
    database_copy: str
    audit_event_id: int | None
    sealed: str
    verified: list[str] = field(default_factory=list)
    old_row_versions_removed: bool = True
    # Who could still see the old row version when the table was rewritten.
    old_row_version_holders: list[str] = field(default_factory=list)
    # Set when a later run completed an erasure an earlier run left incomplete.
    completed_at: str | None = None
    # Backups whose (format 1) manifests keep plain digests of the tenant's tables.
    plain_digests: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [
            f"# Erasure certificate: tenant {self.tenant_id}",
            "",
            f"- tenant key destroyed: `{self.key_id}` at {self.erased_at}",
            *([f"- erasure completed at {self.completed_at}"] if self.completed_at else []),
            f"- key ledger version: {self.ledger_version}",
            f"- store copy: {self.store_copy}",
            f"- database copy: {self.database_copy}",
            f"- audit log: event {self.audit_event_id}, {self.sealed}",
            f"- retained backups holding the tenant's data, now unreadable ({len(self.backups)}):",
            *[f"  - {b}" for b in self.backups],
            "- checked after the erasure:",
            *[f"  - {v}" for v in self.verified],
            *(
                [
                    "- manifests written before digests were keyed, which keep plain SHA-256 "
                    f"digests of the tenant's tables until retention deletes them "
                    f"({len(self.plain_digests)}):",
                    *[f"  - {b}" for b in self.plain_digests],
                ]
                if self.plain_digests
                else []
            ),
        ]
        return "\n".join(lines) + "\n"

    def summary(self, path: Path) -> str:
        """The command's line of output."""
        done = "completed the erasure of" if self.completed_at else "erased"
        return (
            f"[green]{done} tenant {self.tenant_id}:[/] key {self.key_id} destroyed in both "
            f"ledger copies at {self.erased_at}; {len(self.backups)} retained backup(s) hold its "
            f"data unreadable; audit log {self.sealed}; certificate {path}"
        )

    def unfinished(self, path: Path) -> str | None:
        """What is left to do, in one sentence; None when the erasure is done everywhere."""
        if self.old_row_versions_removed:
            return None
        return (
            f"tenant {self.tenant_id}'s key {self.key_id} is destroyed in both ledger copies, but "
            "an old row version of hardening.tenant_key_ledger holding it is not yet physically "
            f"removed ({'; '.join(self.old_row_version_holders)} could still see it, as "
            f"{path} says); end those, then run `{ERASE_COMMAND} {self.tenant_id}` to rewrite "
            "the table and certify it."
        )


def write_certificate(certificate: ErasureCertificate, evidence_root: Path) -> Path:
    """``<evidence>/erasures/<stamp>-tenant-<id>.json`` and ``.md``; returns the JSON path."""
    folder = evidence_root / "erasures"
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / f"{report_stamp()}-tenant-{certificate.tenant_id}"
    json_path = base.with_suffix(".json")
    json_path.write_text(json.dumps(asdict(certificate), indent=2) + "\n", encoding="utf-8")
    base.with_suffix(".md").write_text(certificate.markdown(), encoding="utf-8")
    return json_path
