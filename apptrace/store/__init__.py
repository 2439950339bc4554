"""The DuckDB file: its tables (``schema``), the writer the analysis process owns (``writer``),
redaction of secrets before rows are stored (``redact``), and the query server that answers
read-only SQL on ``<db>.sock`` while the writer holds the file (``server``).

Nothing is imported here, so that the query side (``import px``) can read ``schema`` without loading
the writer.
"""
