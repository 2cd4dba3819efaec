-- 022_audit_row_hashes: each audit row's seal hash, kept so a chain can be verified without the row.
--
-- Backups put a tenant's audit rows into that tenant's object, under the tenant's own key, so
-- that erase-tenant makes them unreadable in every retained backup along with the tenant's
-- other rows. A restore of such a backup then lacks those rows, and their seals could no longer
-- be recomputed. This table keeps, per audit row, the row hash its seal covers (docs/
-- audit-seal-format.md): 32 bytes that reveal nothing a seal's fingerprints do not, and that
-- let a verifier recompute every seal digest over the rows it has plus the hashes of the rows
-- it may not read. The hashes are not trusted: a wrong one makes its seal's digest differ.
--
-- The backup fills it for sealed rows (backup/nightly.py via hardening/seals/row_hashes.py) and
-- carries it in the shared object. It is owned by the role that migrates (the one that runs
-- backups), like the key ledger, and closed to the API roles.

CREATE TABLE hardening.audit_row_hashes (
    id        bigint PRIMARY KEY,
    tenant_id uuid,
    row_hash  bytea NOT NULL CHECK (pg_catalog.octet_length(row_hash) = 32)
);

DO $close$
DECLARE
    grantees text := concat_ws(', ', 'PUBLIC',
        (SELECT string_agg(quote_ident(r), ', ')
         FROM unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r
         WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r)));
BEGIN
    EXECUTE format('REVOKE ALL ON hardening.audit_row_hashes FROM %s', grantees);
END
$close$;
