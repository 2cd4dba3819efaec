-- Called by the guard for an unattributed service_role statement: true (and the source noted)
-- in report mode, false in enforce mode. SECURITY DEFINER so service_role needs no privilege on
-- either table; the source is read here from the session, not taken from the caller.
CREATE OR REPLACE FUNCTION hardening.allow_unattributed_write(target_table text, operation text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = ''
AS $fn$
DECLARE
    claims text := nullif(current_setting('request.jwt.claims', true), '');
    headers text := nullif(current_setting('request.headers', true), '');
    jwt_role text;
    client_info text;
BEGIN
    -- Only the guard trigger may ask; called by hand it would let a caller fill the report.
    IF pg_catalog.pg_trigger_depth() = 0 THEN
        RAISE EXCEPTION 'hardening.allow_unattributed_write is called by the audit guard only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF coalesce((SELECT m.mode FROM hardening.service_role_mode m), 'enforce') <> 'report' THEN
        RETURN false;
    END IF;
    IF claims IS NOT NULL THEN
        BEGIN
            jwt_role := claims::jsonb ->> 'role';
        EXCEPTION WHEN invalid_text_representation THEN
            jwt_role := '(malformed request.jwt.claims)';
        END;
    END IF;
    IF headers IS NOT NULL THEN
        BEGIN
            client_info := coalesce(headers::jsonb ->> 'x-client-info',
                                    headers::jsonb ->> 'user-agent');
        EXCEPTION WHEN invalid_text_representation THEN
            client_info := '(malformed request.headers)';
        END;
    END IF;
    INSERT INTO hardening.unattributed_writes
        (table_name, operation, application_name, jwt_role, client_info, request_path,
         client_addr)
    VALUES (target_table, operation, current_setting('application_name'), jwt_role, client_info,
            nullif(current_setting('request.path', true), ''),
            pg_catalog.inet_client_addr()::text);
    RETURN true;
END
$fn$;
GRANT CREATE ON SCHEMA hardening TO hardening_audit_owner;
ALTER FUNCTION hardening.allow_unattributed_write(text, text) OWNER TO hardening_audit_owner;
REVOKE CREATE ON SCHEMA hardening FROM hardening_audit_owner;
