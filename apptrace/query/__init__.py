"""The read-only side: px (the DataFrame API), report, watch, and running scripts and SQL.

Queries reach the database through ``backend``: a running tracer's socket, or the file opened
read-only. Nothing here writes the database.
"""
