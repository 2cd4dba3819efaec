-- 014_audit_seal_v2: seals hashed outside the database, with the audit sequence's high-water mark.
--
-- Seals and checks from 006 and 010 (format 1) were digested by SQL functions inside the
-- database, which its owner can replace. From format 2 on, every digest is computed by the
-- verifier in Python from the column values it fetched (docs/audit-seal-format.md). Format 1
-- seals stay valid: the verifier reproduces their row text in Python too, so they are checked
-- without database code as well. Format 1 checks are ignored (their versions digest came from
-- the database), so each seal is re-hashed once and checked again in format 2.
--
-- Each format 2 seal also records where the unsealed window stood when it was made, so the
-- next seal and every verification can tell when that window was rewritten:
--   high_water        the audit id sequence's last handed-out value when the seal was made
--   pending           fingerprints of the committed rows above to_id and up to high_water
--                     (rows that a still-open transaction kept out of this seal's range)
--   last_created_at   the largest created_at of any row up to to_id
--
-- Nothing here touches the write path. Both tables stay append-only (adding a column with a
-- default updates no row, so the guards are not involved).

ALTER TABLE hardening.audit_seals
    ADD COLUMN version smallint NOT NULL DEFAULT 1 CHECK (version IN (1, 2)),
    ADD COLUMN high_water bigint,
    ADD COLUMN pending bytea,
    ADD COLUMN last_created_at timestamptz,
    ADD CONSTRAINT audit_seals_v2_marks CHECK (
        version = 1
        OR (high_water IS NOT NULL AND high_water >= to_id AND pending IS NOT NULL)
    );

ALTER TABLE hardening.audit_seal_checks
    ADD COLUMN version smallint NOT NULL DEFAULT 1 CHECK (version IN (1, 2));
