-- Catch-up for a database whose record holds the first released text of 002_audit_events.sql.
--
-- The revision hands audit_events to its owner after the guard trigger exists (the same end
-- state) and also closes the identity sequence behind it to the API roles, which default
-- privileges may have opened.

REVOKE ALL ON SEQUENCE public.audit_events_id_seq FROM PUBLIC, anon, authenticated, service_role;
