"""PostgreSQL frontend/backend protocol v3: messages to ``pgsql_events`` records."""

from .stitch import PgSQLParser

__all__ = ["PgSQLParser"]
