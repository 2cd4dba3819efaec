-- 005_canary_indexes: what the canaries need to stay cheap on a large database, and where their
-- alert state lives.
--
-- The canaries run every 15 minutes against the live database, so each must be answered from an
-- index rather than a scan of messages or audit_events:
--   * messages (unit_id, development_id, tenant_id): the integrity canaries walk the distinct
--     (unit, development, tenant) triples with a skip scan (a few thousand index probes instead of
--     reading every message) and check each triple against its parents. The constraints from 003
--     cannot be trusted for this: session_replication_role = replica skips the foreign-key
--     triggers while the constraint still reads as validated, so the data itself is checked.
--   * audit_events deletes: a partial index on the rare DELETE events, so the delete-volume
--     canary reads the last week of deletes without touching the flood of INSERT events.
--   * onboarding_attempts failures: a partial index on failed attempts by time.
-- Plain CREATE INDEX (not CONCURRENTLY: the runner applies each file in one transaction) under a
-- lock_timeout, so a busy table makes this fail fast rather than queue writers behind it.
--
-- hardening.alert_state remembers which finding was last alerted to Slack, so an unchanged
-- finding is not re-sent every 15 minutes and a "resolved" message follows when it clears. It
-- lives in the database rather than on a worker's disk because the CLI, cron and every Dagster
-- run worker must share it, and a row is written only after Slack accepted the alert.

SET LOCAL lock_timeout = '10s';

CREATE INDEX IF NOT EXISTS messages_unit_development_tenant_idx
    ON public.messages (unit_id, development_id, tenant_id);

CREATE INDEX IF NOT EXISTS audit_events_deletes_idx
    ON public.audit_events (created_at, tenant_id, table_name) INCLUDE (record_id)
    WHERE operation = 'DELETE';

CREATE INDEX IF NOT EXISTS onboarding_attempts_failed_idx
    ON public.onboarding_attempts (created_at, tenant_id) INCLUDE (error)
    WHERE status = 'failed';

CREATE TABLE IF NOT EXISTS hardening.alert_state (
    alert_key         text PRIMARY KEY,
    fingerprint       text NOT NULL,
    magnitude         bigint NOT NULL CHECK (magnitude >= 0),
    summary           text NOT NULL,
    first_alerted_at  timestamptz NOT NULL DEFAULT now(),
    last_alerted_at   timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON hardening.alert_state FROM PUBLIC;
