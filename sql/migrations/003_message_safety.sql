-- 003_message_safety: every message belongs to a real unit, development and tenant that agree.
--
-- Safe on a live database: it first counts the legacy rows that would break the new rules and,
-- if there are any, stops with a report (how many of each kind, and the first ids) so nothing
-- changes; the migration runner applies each file in one transaction. Constraints are added
-- NOT VALID and then validated, under a lock_timeout, so a busy table fails fast instead of
-- queueing every writer behind this migration.

SET LOCAL lock_timeout = '10s';

DO $preflight$
DECLARE
    problems text := '';
    n bigint;
    sample text;
BEGIN
    SELECT count(*), string_agg(id::text, ', ' ORDER BY id) FILTER (WHERE rn <= 5)
    INTO n, sample
    FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM public.messages
          WHERE unit_id IS NULL OR development_id IS NULL) s;
    IF n > 0 THEN
        problems := problems || format(E'\n  %s message(s) without a unit or development (e.g. %s)', n, sample);
    END IF;

    SELECT count(*), string_agg(id::text, ', ' ORDER BY id) FILTER (WHERE rn <= 5)
    INTO n, sample
    FROM (SELECT m.id, row_number() OVER (ORDER BY m.id) AS rn FROM public.messages m
          WHERE NOT EXISTS (SELECT 1 FROM public.tenants t WHERE t.id = m.tenant_id)
             OR (m.development_id IS NOT NULL AND NOT EXISTS
                    (SELECT 1 FROM public.developments d WHERE d.id = m.development_id))
             OR (m.unit_id IS NOT NULL AND NOT EXISTS
                    (SELECT 1 FROM public.units u WHERE u.id = m.unit_id))) s;
    IF n > 0 THEN
        problems := problems || format(E'\n  %s orphaned message(s) whose unit, development or tenant is missing (e.g. %s)', n, sample);
    END IF;

    SELECT count(*), string_agg(id::text, ', ' ORDER BY id) FILTER (WHERE rn <= 5)
    INTO n, sample
    FROM (SELECT m.id, row_number() OVER (ORDER BY m.id) AS rn
          FROM public.messages m JOIN public.units u ON u.id = m.unit_id
          WHERE u.tenant_id <> m.tenant_id OR u.development_id <> m.development_id) s;
    IF n > 0 THEN
        problems := problems || format(E'\n  %s misaligned message(s) whose unit belongs to another development or tenant (e.g. %s)', n, sample);
    END IF;

    IF problems <> '' THEN
        RAISE EXCEPTION 'messages hold legacy rows that break 003_message_safety; nothing was changed:%', problems
            USING ERRCODE = 'check_violation',
                  HINT = 'Fix or remove these rows (see docs/runbook.md#legacy-messages), then run hardening migrate again.';
    END IF;
END
$preflight$;

-- A message's unit, development and tenant must agree: the composite key below points at this.
ALTER TABLE public.units
    ADD CONSTRAINT units_id_development_tenant_key UNIQUE (id, development_id, tenant_id);

-- NOT NULL through a validated CHECK first: SET NOT NULL then skips its own full-table scan.
ALTER TABLE public.messages
    ADD CONSTRAINT messages_unit_id_not_null CHECK (unit_id IS NOT NULL) NOT VALID,
    ADD CONSTRAINT messages_development_id_not_null CHECK (development_id IS NOT NULL) NOT VALID;
ALTER TABLE public.messages VALIDATE CONSTRAINT messages_unit_id_not_null;
ALTER TABLE public.messages VALIDATE CONSTRAINT messages_development_id_not_null;
ALTER TABLE public.messages ALTER COLUMN unit_id SET NOT NULL,
                            ALTER COLUMN development_id SET NOT NULL;
ALTER TABLE public.messages
    DROP CONSTRAINT messages_unit_id_not_null,
    DROP CONSTRAINT messages_development_id_not_null;

ALTER TABLE public.messages
    ADD CONSTRAINT messages_unit_id_fkey FOREIGN KEY (unit_id)
        REFERENCES public.units (id) ON DELETE RESTRICT NOT VALID,
    ADD CONSTRAINT messages_development_id_fkey FOREIGN KEY (development_id)
        REFERENCES public.developments (id) ON DELETE RESTRICT NOT VALID,
    ADD CONSTRAINT messages_tenant_id_fkey FOREIGN KEY (tenant_id)
        REFERENCES public.tenants (id) ON DELETE RESTRICT NOT VALID,
    ADD CONSTRAINT messages_unit_development_tenant_fkey
        FOREIGN KEY (unit_id, development_id, tenant_id)
        REFERENCES public.units (id, development_id, tenant_id) ON DELETE RESTRICT NOT VALID;

ALTER TABLE public.messages VALIDATE CONSTRAINT messages_unit_id_fkey;
ALTER TABLE public.messages VALIDATE CONSTRAINT messages_development_id_fkey;
ALTER TABLE public.messages VALIDATE CONSTRAINT messages_tenant_id_fkey;
ALTER TABLE public.messages VALIDATE CONSTRAINT messages_unit_development_tenant_fkey;

-- Foreign keys are checked on the referencing side by index; ON DELETE RESTRICT checks need
-- these too, or deleting a unit scans every message.
CREATE INDEX IF NOT EXISTS messages_unit_id_idx ON public.messages (unit_id);
CREATE INDEX IF NOT EXISTS messages_development_id_idx ON public.messages (development_id);
CREATE INDEX IF NOT EXISTS units_development_id_idx ON public.units (development_id);
