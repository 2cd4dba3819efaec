"""Periodic seals over the audit log: a hash chain that shows when history was rewritten.

The append-only guards on ``audit_events`` stop every ordinary role, but whoever controls the
database (a superuser, or a role that may set ``session_replication_role``) can disable a guard
and change, delete or back-date rows. Seals do not prevent that; they make it *evident*, and
they do not trust the database to say so: every digest is computed here, in Python, from the
column values as fetched. The format is specified in ``docs/audit-seal-format.md``.

* ``format``: the seal and check records, MAC, fingerprints, seal digest;
* ``rows``: fetching audit rows as raw values and hashing them (format 1 and 2);
* ``horizon``: how far a seal may reach without sealing over an open transaction;
* ``window``: the high-water mark and the checks on the unsealed window;
* ``sealing``: ``seal_audit_log``;
* ``checks``: row-version checks that let a verification skip unchanged seals;
* ``verify``: ``verify_seal_chain`` / ``verify_audit_seals`` (the ``audit_seal_chain`` line);
* ``anchor``: the newest seal, kept on the sealing host where the database cannot reach.

Sealing adds nothing to the write path: no trigger, column or lock on ``audit_events`` or on
any tenant table. It only reads rows that are already committed.
"""

from hardening_pipeline.hardening.seals.checks import SealCheck, row_versions
from hardening_pipeline.hardening.seals.format import (
    GENESIS_DIGEST,
    STORE_PREFIX,
    Seal,
    SealError,
    decode_fingerprints,
    store_key,
)
from hardening_pipeline.hardening.seals.horizon import Horizon, safe_horizon
from hardening_pipeline.hardening.seals.sealing import SealRun, read_seals, seal_audit_log
from hardening_pipeline.hardening.seals.verify import (
    SealVerification,
    verify_audit_seals,
    verify_seal_chain,
)
from hardening_pipeline.hardening.seals.window import CREATED_AT_TOLERANCE

__all__ = [
    "CREATED_AT_TOLERANCE",
    "GENESIS_DIGEST",
    "STORE_PREFIX",
    "Horizon",
    "Seal",
    "SealCheck",
    "SealError",
    "SealRun",
    "SealVerification",
    "decode_fingerprints",
    "read_seals",
    "row_versions",
    "safe_horizon",
    "seal_audit_log",
    "store_key",
    "verify_audit_seals",
    "verify_seal_chain",
]
