"""MySQL / MariaDB client-server protocol: packets to ``mysql_events`` records."""

from .stitch import MySQLParser

__all__ = ["MySQLParser"]
