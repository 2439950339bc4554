"""apptrace: an eBPF tracer of TLS plaintext (OpenSSL, BoringSSL) into DuckDB."""

__version__ = "0.1.0"
