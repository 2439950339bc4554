"""Process 1, capture: kernel → spool.

Loads bpf/tls_capture.c and attaches it (``loader``) to the TLS objects found by ELF symbol lookup
(``elfsyms``), drains the ring buffer (``ringbuf``), notes what /proc knows about new processes and
sockets (``enrich``, ``procfs``) and appends everything to the spool (``tracer``: the capture loop).
It never parses: it must keep pace with the kernel.
"""
