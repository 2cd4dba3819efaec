-- The capture triggers' arguments for a table: the tenant column, its kind, and the primary key
-- unless that is the column id (then the two arguments 011 gave, which mean exactly that).
CREATE OR REPLACE FUNCTION hardening.audit_capture_arguments(target regclass, tenant_column text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = ''
AS $fn$
DECLARE
    tenant_type oid := (SELECT atttypid FROM pg_catalog.pg_attribute
                        WHERE attrelid = target AND attname = tenant_column
                          AND NOT attisdropped);
    key_columns text[] := (SELECT array_agg(a.attname::text ORDER BY k.position)
                           FROM pg_catalog.pg_index i
                           CROSS JOIN LATERAL unnest(i.indkey::int2[])
                                WITH ORDINALITY AS k(attnum, position)
                           JOIN pg_catalog.pg_attribute a
                             ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                           WHERE i.indrelid = target AND i.indisprimary);
    kind text := CASE WHEN tenant_type = 'uuid'::regtype THEN 'uuid' ELSE 'text' END;
BEGIN
    IF tenant_type IS NULL THEN
        RAISE EXCEPTION '% has no column %', target, tenant_column
            USING ERRCODE = 'undefined_column';
    END IF;
    IF key_columns IS NULL OR key_columns = ARRAY['id'] THEN
        RETURN CASE kind WHEN 'uuid' THEN format('%L', tenant_column)
                         ELSE format('%L, %L', tenant_column, kind) END;
    END IF;
    RETURN format('%L, %L, ', tenant_column, kind)
        || (SELECT string_agg(format('%L', c), ', ') FROM unnest(key_columns) AS c);
END
$fn$;
