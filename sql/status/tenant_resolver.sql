-- How the kit finds the caller's tenant: one row, a claim resolver or a membership table.
SELECT * FROM hardening.tenant_resolver
