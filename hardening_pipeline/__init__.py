"""Make a multi-tenant Postgres database provably safe, and keep the evidence."""

__version__ = "0.1.0"
