SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s
AND pg_catalog.has_function_privilege(oid, %s::oid, 'EXECUTE')
