SELECT id::text AS id FROM public.tenants ORDER BY id LIMIT 1
