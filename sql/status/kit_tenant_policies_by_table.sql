SELECT table_name, tenant_policy FROM hardening.managed_tables
