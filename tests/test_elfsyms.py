"""Finding TLS functions in real objects: what holds them, what holds them stripped, what only imports them."""

from __future__ import annotations

import glob
import os
import sys

import pytest

from apptrace.capture.elfsyms import TlsObject, Unprobeable, go_version, inspect


def first(pattern: str) -> str:
    found = sorted(glob.glob(pattern))
    if not found:
        pytest.fail(f"{pattern} is not installed: run the README's setup command", pytrace=False)
    return found[0]


@pytest.mark.parametrize("pattern", [
    "/usr/lib/x86_64-linux-gnu/libcurl.so.4*",  # curl's library links libssl: imports, no implementation
    "/usr/lib/x86_64-linux-gnu/libpq.so.5*",
    "/usr/bin/h2load",
    "/usr/sbin/nghttpd",
    "/usr/sbin/mariadbd",
])
def test_objects_that_only_import_tls_are_not_reported(pattern: str) -> None:
    assert inspect(first(pattern)) is None


def test_a_tls_library_has_its_functions_found() -> None:
    found = inspect(first("/usr/lib/x86_64-linux-gnu/libssl.so.3"))
    assert isinstance(found, TlsObject) and found.tls_lib == "openssl"
    assert {"SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex"} <= found.offsets.keys()


def test_a_stripped_implementation_is_named() -> None:
    import grpc

    so = first(os.path.join(os.path.dirname(grpc.__file__), "_cython", "cygrpc*.so"))
    found = inspect(so)
    assert isinstance(found, Unprobeable) and "stripped" in found.reason


def test_go_programs_are_found_with_their_version(go_programs) -> None:
    # stripped or not: the version comes from the build info, crypto/tls from .gopclntab, which -s -w keeps
    # (tests/test_go.py checks what is found)
    for path in (go_programs.https_get, go_programs.https_get_stripped):
        found = inspect(path)
        assert isinstance(found, TlsObject) and found.tls_lib == "go", (path, found)
        assert found.version.startswith("go1.") and set(found.offsets) == set(found.returns), found


def test_go_version_only_for_go_programs(go_programs) -> None:
    assert go_version(go_programs.https_get) is not None
    assert inspect(sys.executable) is None  # not Go, not TLS
    assert go_version(sys.executable) is None


@pytest.mark.parametrize(("pattern", "name"), [
    ("/usr/lib/x86_64-linux-gnu/libgnutls.so.30*", "GnuTLS"),
    ("/usr/lib/x86_64-linux-gnu/libssl3.so", "NSS"),
    ("/usr/lib/x86_64-linux-gnu/libnss3.so", "NSS"),
])
def test_other_tls_libraries_are_named(pattern: str, name: str) -> None:
    found = inspect(first(pattern))
    assert isinstance(found, Unprobeable) and found.reason.startswith(f"{name}: not captured"), found
