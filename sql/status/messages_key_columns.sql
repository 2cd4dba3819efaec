SELECT a.attname, a.attnotnull FROM pg_catalog.pg_attribute a
WHERE a.attrelid = to_regclass('public.messages')
  AND a.attname IN ('unit_id', 'development_id') AND NOT a.attisdropped
