"""Process 2, analysis: spool → rows.

Follows the spool at low priority (``loop``), ties records to connections and feeds each
connection's bytes to the protocol parsers (``pipeline``), and hands rows to a sink: the DuckDB
store, or nothing. ``replay`` runs the same pipeline over a recorded raw capture.
"""
