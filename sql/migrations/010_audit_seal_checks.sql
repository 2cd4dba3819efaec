-- 010_audit_seal_checks: remember which seals were re-hashed in full, and the row versions seen.
--
-- Verifying the chain (006) re-hashes every sealed row: each jsonb image is read, rendered as
-- canonical text and hashed, about 10 s per million rows, on every status check and every
-- hourly sealing run. Most of that work repeats what the previous run already proved.
--
-- A row cannot be changed through SQL without getting a new row version: UPDATE writes a new
-- tuple (a new xmin and ctid), DELETE removes it, and a row forged into a sealed range has its
-- own. So after a seal's rows have been re-hashed and found intact, the verifier records a
-- digest of their versions. While the versions still hash to a recorded digest, the rows are
-- the ones that were re-hashed, and reading their headers (about 2 s per million rows)
-- replaces re-hashing them. Two things can change what a row reads as without a new version,
-- so the digest covers them too: the table's shape (renaming, swapping or re-adding columns,
-- or a type change that rewrites nothing) and a value stored out of line in the TOAST table
-- (rows large enough to have one contribute their full row hash). Anything that moves rows
-- (VACUUM FULL or CLUSTER when they compact, a logical restore) changes the versions, and the
-- seal is simply re-hashed again.
--
-- Columns (formats in hardening_pipeline/hardening/seals.py, "Row-version checks"):
--   seq, seal_digest  the seal that was re-hashed; a check applies only while that seal has
--                     this digest (no foreign key: the digest is the binding)
--   versions_digest   SHA-256 over the table's shape and, for every row in the seal's range in
--                     id order, int8(id) || int8(xmin) || text(ctid) (and the row hash for a
--                     row large enough to keep a value out of line)
--   checked_at/by     when and by whom
--   key_id, mac       HMAC-SHA256 under the seal key: with a keyring, an unauthenticated check
--                     is ignored, so someone who controls the database but not the key cannot
--                     vouch for rows they rewrote (and with a store but no keyring, checks are
--                     not used at all: the store, not the database, is then the reference)
--
-- Nothing here touches the write path. Append-only like audit_seals (a new check is added
-- rather than an old one changed), owned by the audit owner, ENABLE ALWAYS guard.

CREATE TABLE hardening.audit_seal_checks (
    seq              bigint NOT NULL,
    seal_digest      bytea NOT NULL CHECK (octet_length(seal_digest) = 32),
    versions_digest  bytea NOT NULL CHECK (octet_length(versions_digest) = 32),
    checked_at       timestamptz NOT NULL,
    checked_by       text NOT NULL,
    key_id           text,
    mac              bytea,
    PRIMARY KEY (seq, checked_at),
    CONSTRAINT audit_seal_checks_mac_pair CHECK ((key_id IS NULL) = (mac IS NULL))
);

COMMENT ON TABLE hardening.audit_seal_checks IS
    'Full re-hashes of audit seals and the row versions they saw; append-only; lets the '
    'audit_seal_chain status line skip unchanged seals. See hardening_pipeline/hardening/seals.py.';

CREATE FUNCTION hardening.audit_seal_checks_append_only() RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
BEGIN
    RAISE EXCEPTION 'audit_seal_checks is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'A check is never changed or removed; the next verification adds a new one.';
END
$fn$;
REVOKE ALL ON FUNCTION hardening.audit_seal_checks_append_only() FROM PUBLIC;

CREATE TRIGGER audit_seal_checks_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON hardening.audit_seal_checks
    FOR EACH STATEMENT EXECUTE FUNCTION hardening.audit_seal_checks_append_only();
ALTER TABLE hardening.audit_seal_checks ENABLE ALWAYS TRIGGER audit_seal_checks_append_only;

-- Hand the table to the NOLOGIN owner only now, after its trigger exists: the REVOKE below
-- also takes TRIGGER from the owner, and a migrating role that is not a superuser (Supabase's
-- postgres) acts through that owner. Changing the owner needs the new owner to hold CREATE on
-- the schema, granted for that one statement.
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER TABLE hardening.audit_seal_checks OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
REVOKE ALL ON hardening.audit_seal_checks FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON hardening.audit_seal_checks FROM hardening_audit_owner;
GRANT SELECT, INSERT ON hardening.audit_seal_checks TO hardening_audit_owner;
GRANT SELECT ON hardening.audit_seal_checks TO service_role;
