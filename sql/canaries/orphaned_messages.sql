-- orphaned_messages: messages whose unit, development or tenant no longer exists. Must be 0.
--
-- One row per affected tenant: how many orphaned messages, a few of their ids, and what is
-- missing. No rows means healthy. Safe to run by hand (psql -f): it only reads.
--
-- Why not trust the foreign keys from 003: SET session_replication_role = replica skips the
-- foreign-key triggers while pg_constraint still says "validated", so the rows themselves are
-- checked. Reading every message would be slow on a large table, so the distinct
-- (unit, development, tenant) triples are walked with a skip scan over
-- messages_unit_development_tenant_idx (one index probe per triple), each triple is checked
-- against its parents, and only the bad triples are expanded back into messages.
WITH RECURSIVE settings AS (
    SELECT coalesce(nullif(current_setting('canary.sample_size', true), ''), '5')::int AS sample_size
),
triples AS (
    (SELECT m.unit_id, m.development_id, m.tenant_id
     FROM public.messages m
     WHERE m.unit_id IS NOT NULL AND m.development_id IS NOT NULL AND m.tenant_id IS NOT NULL
     ORDER BY m.unit_id, m.development_id, m.tenant_id
     LIMIT 1)
    UNION ALL
    SELECT nxt.unit_id, nxt.development_id, nxt.tenant_id
    FROM triples t
    CROSS JOIN LATERAL (
        SELECT m.unit_id, m.development_id, m.tenant_id
        FROM public.messages m
        WHERE (m.unit_id, m.development_id, m.tenant_id)
              > (t.unit_id, t.development_id, t.tenant_id)
          AND m.development_id IS NOT NULL AND m.tenant_id IS NOT NULL
        ORDER BY m.unit_id, m.development_id, m.tenant_id
        LIMIT 1
    ) nxt
),
-- MATERIALIZED: only the few bad triples are expanded back into messages.
bad_triples AS MATERIALIZED (
    SELECT * FROM (
        SELECT t.*,
               concat_ws(', ',
                   CASE WHEN NOT EXISTS (SELECT 1 FROM public.units u WHERE u.id = t.unit_id)
                        THEN 'unit' END,
                   CASE WHEN NOT EXISTS (SELECT 1 FROM public.developments d
                                         WHERE d.id = t.development_id)
                        THEN 'development' END,
                   CASE WHEN NOT EXISTS (SELECT 1 FROM public.tenants te WHERE te.id = t.tenant_id)
                        THEN 'tenant' END) AS missing
        FROM triples t
    ) checked
    WHERE checked.missing <> ''
),
orphans AS (
    SELECT m.id, m.tenant_id, b.missing
    FROM bad_triples b
    JOIN public.messages m
      ON m.unit_id = b.unit_id AND m.development_id = b.development_id
     AND m.tenant_id = b.tenant_id
    UNION ALL
    -- NULL parents exist only if 003's NOT NULL was dropped; they sort outside the walk above.
    SELECT m.id, m.tenant_id, 'a NULL unit, development or tenant id'
    FROM public.messages m
    WHERE m.unit_id IS NULL OR m.development_id IS NULL OR m.tenant_id IS NULL
)
SELECT o.tenant_id,
       'messages' AS subject,
       count(*) AS issue_count,
       (array_agg(o.id::text ORDER BY o.id))[1:(SELECT sample_size FROM settings)] AS sample_ids,
       'missing ' || string_agg(DISTINCT o.missing, '; ') AS detail
FROM orphans o
GROUP BY o.tenant_id
ORDER BY issue_count DESC, o.tenant_id;
