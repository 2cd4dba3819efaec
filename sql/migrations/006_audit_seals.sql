-- 006_audit_seals: periodic seals over audit_events, a hash chain kept beside the log.
--
-- The append-only guards from 002 stop ordinary roles, but a superuser (or anyone able to set
-- session_replication_role and disable a trigger) can still rewrite history. A seal makes that
-- visible: every so often the sealing job hashes the audit rows added since the previous seal,
-- in id order, into a digest chained to the previous seal's digest, and records it here and as
-- a MAC'd copy in the backup store. The status check recomputes the chain; any changed, deleted
-- or back-dated row breaks it and the line names the first bad id.
--
-- Nothing here touches the write path: no trigger, no column and no lock is added to
-- audit_events or to any tenant table. Sealing reads rows that were already committed.
--
-- Columns (the byte formats are described in hardening_pipeline/hardening/seals.py):
--   seq               1, 2, 3 ... with no gaps; seal n chains to seal n - 1
--   from_id, to_id    the id range covered, inclusive; seal 1 starts at id 1 and each next seal
--                     starts right after the previous one, so every id up to the last to_id is
--                     covered by exactly one seal (empty ranges included: a gap is sealed too)
--   row_count         how many audit rows the range held when sealed
--   digest            SHA-256 over previous_digest, the range and every row's hash
--   previous_digest   the digest of seal seq - 1 (32 zero bytes for seal 1)
--   fingerprints      per row: the id (delta-encoded) and the first 8 bytes of its hash, so a
--                     mismatch can be pinned to the first bad id, not just to the seal
--   key_id, mac       HMAC-SHA256 under a key derived from the backup master key: someone who
--                     controls the database but not the key cannot forge a seal
--
-- The table is append-only exactly like audit_events: owned by the NOLOGIN audit owner, nobody
-- holds UPDATE, DELETE or TRUNCATE, and an ENABLE ALWAYS statement guard refuses them anyway.

CREATE TABLE hardening.audit_seals (
    seq              bigint PRIMARY KEY CHECK (seq >= 1),
    from_id          bigint NOT NULL CHECK (from_id >= 1),
    to_id            bigint NOT NULL,
    row_count        bigint NOT NULL CHECK (row_count >= 0),
    digest           bytea NOT NULL CHECK (octet_length(digest) = 32),
    previous_digest  bytea NOT NULL CHECK (octet_length(previous_digest) = 32),
    fingerprints     bytea NOT NULL,
    sealed_at        timestamptz NOT NULL,
    sealed_by        text NOT NULL,
    key_id           text,
    mac              bytea,
    CONSTRAINT audit_seals_range CHECK (to_id >= from_id - 1),
    CONSTRAINT audit_seals_mac_pair CHECK ((key_id IS NULL) = (mac IS NULL))
);

COMMENT ON TABLE hardening.audit_seals IS
    'Hash-chain seals over public.audit_events; append-only; verified by the audit_seal_chain '
    'status line. See hardening_pipeline/hardening/seals.py.';

CREATE FUNCTION hardening.audit_seals_append_only() RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
BEGIN
    RAISE EXCEPTION 'audit_seals is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'A seal is never changed or removed; the next sealing run adds a new one.';
END
$fn$;
REVOKE ALL ON FUNCTION hardening.audit_seals_append_only() FROM PUBLIC;

CREATE TRIGGER audit_seals_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON hardening.audit_seals
    FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_seals_append_only();
ALTER TABLE hardening.audit_seals ENABLE ALWAYS TRIGGER audit_seals_append_only;

-- Hand the table to the NOLOGIN owner only now, after its trigger exists: the REVOKE below
-- also takes TRIGGER from the owner, and a migrating role that is not a superuser (Supabase's
-- postgres) acts through that owner. Changing the owner needs the new owner to hold CREATE on
-- the schema, granted for that one statement.
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER TABLE hardening.audit_seals OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
REVOKE ALL ON hardening.audit_seals FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON hardening.audit_seals FROM hardening_audit_owner;
GRANT SELECT, INSERT ON hardening.audit_seals TO hardening_audit_owner;
GRANT SELECT ON hardening.audit_seals TO service_role;
