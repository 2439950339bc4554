"""Small helpers every stage may use: units people type, and the defaults that must agree everywhere.

The bottom layer: it imports nothing else from apptrace.
"""
