-- tenant_misalignment: rows whose tenant disagrees with their parent's. Must be 0.
--
-- A message must share its unit's development and tenant and its development's tenant; a unit
-- must share its development's tenant. A misaligned row is visible to the wrong tenant's
-- policies, so this is a data leak, not a cosmetic problem. One row per (tenant, table) with
-- how many rows disagree, a few of their ids, and what they disagree with. No rows means
-- healthy. Safe to run by hand (psql -f): it only reads.
--
-- The composite foreign keys from 001/003 forbid this, but SET session_replication_role =
-- replica skips their triggers while the constraints still read as validated, so the rows are
-- checked. Messages are checked per distinct (unit, development, tenant) triple, walked with a
-- skip scan over messages_unit_development_tenant_idx, instead of row by row.
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
                   CASE WHEN u.tenant_id <> t.tenant_id
                        THEN 'unit''s tenant' END,
                   CASE WHEN u.development_id <> t.development_id
                        THEN 'unit''s development' END,
                   CASE WHEN d.tenant_id <> t.tenant_id
                        THEN 'development''s tenant' END) AS disagrees_with
        FROM triples t
        LEFT JOIN public.units u ON u.id = t.unit_id
        LEFT JOIN public.developments d ON d.id = t.development_id
    ) checked
    WHERE checked.disagrees_with <> ''
),
misaligned AS (
    SELECT 'messages' AS subject, m.id, m.tenant_id, b.disagrees_with
    FROM bad_triples b
    JOIN public.messages m
      ON m.unit_id = b.unit_id AND m.development_id = b.development_id
     AND m.tenant_id = b.tenant_id
    UNION ALL
    SELECT 'units', u.id, u.tenant_id, 'development''s tenant'
    FROM public.units u
    JOIN public.developments d ON d.id = u.development_id
    WHERE d.tenant_id <> u.tenant_id
)
SELECT x.tenant_id,
       x.subject,
       count(*) AS issue_count,
       (array_agg(x.id::text ORDER BY x.id))[1:(SELECT sample_size FROM settings)] AS sample_ids,
       'disagrees with its ' || string_agg(DISTINCT x.disagrees_with, '; ') AS detail
FROM misaligned x
GROUP BY x.tenant_id, x.subject
ORDER BY issue_count DESC, x.tenant_id, x.subject;
