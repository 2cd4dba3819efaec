-- 013_job_locks: locks that only the jobs can take.
--
-- The backup and the seal used to serialise on advisory locks. Any role that can connect may
-- take any advisory lock key, so anon or authenticated could hold the known key and stop every
-- backup ("another backup running") or stall sealing for ever. A row lock on this table needs
-- UPDATE on it, which only the owner (the role that migrates and runs the jobs) holds: the jobs
-- take it with NOWAIT (backup) or under a lock_timeout (seal), and report who holds it.

CREATE TABLE IF NOT EXISTS hardening.job_locks (
    job  text PRIMARY KEY CHECK (job ~ '^[a-z_]+$')
);
INSERT INTO hardening.job_locks (job) VALUES ('backup'), ('seal') ON CONFLICT DO NOTHING;

REVOKE ALL ON hardening.job_locks FROM PUBLIC;
DO $revoke$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE format('REVOKE ALL ON hardening.job_locks FROM %I', r);
        END IF;
    END LOOP;
END
$revoke$;
