#!/usr/bin/env bash
# Sets up everything apptrace needs on a fresh Debian 12 machine, as root. Idempotent: a second
# run only checks, and takes a few seconds.
#   - Debian's BCC (the PyPI "bcc" is an unrelated package)
#   - kernel headers, only when the running kernel has none of its own
#   - tracefs, mounted if missing
#   - the real peers the tests and benchmarks drive (nghttp2, MariaDB, PostgreSQL, BoringSSL, node,
#     Go, GnuTLS and NSS programs)
#   - .venv/ with apptrace installed editable and bcc importable
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  say "must run as root (eBPF needs it, and so do the package installs)"; exit 1
fi

# Debian packages: BCC, headers, test peers, and tools used by tests/benchmarks.
pkgs=(python3-bpfcc libbpfcc bpftool
      nghttp2-server nghttp2-client curl nodejs
      mariadb-server mariadb-client postgresql postgresql-contrib
      android-libboringssl android-libboringssl-dev gcc make openssl python3-dev
      golang-go golang-github-lib-pq-dev golang-github-go-sql-driver-mysql-dev golang-google-grpc-dev gnutls-bin libnss3 prometheus iperf3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
kver=$(uname -r)
need_headers=0
if [ ! -e "/lib/modules/$kver/build/include" ] && [ ! -e /sys/kernel/kheaders.tar.xz ]; then
  need_headers=1
  dpkg-query -W -f='${Status}' linux-headers-amd64 2>/dev/null | grep -q "install ok installed" \
    || missing+=(linux-headers-amd64)
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# The kernel-headers shim: BCC compiles against /lib/modules/$(uname -r)/build. Only where the
# running kernel ships no headers of its own.
if [ "$need_headers" = 1 ]; then
  build=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
  if [ -z "$build" ] || [ -z "$common" ]; then
    say "linux-headers-amd64 installed but /usr/src has no headers"; exit 1
  fi
  mkdir -p "/lib/modules/$kver"
  ln -sfn "$build" "/lib/modules/$kver/build"
  ln -sfn "$common" "/lib/modules/$kver/source"
  say "kernel $kver has no headers: linked $build"
fi

# tracefs: tracepoints fail to attach and uprobes fail to detach without it.
if [ ! -e /sys/kernel/tracing/uprobe_events ]; then
  mount -t tracefs nodev /sys/kernel/tracing && say "mounted tracefs at /sys/kernel/tracing"
fi

# Python environment: the project editable, plus bcc from Debian's dist-packages (only that package).
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($py --version)"
  "$py" -m venv .venv
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
stamp=.venv/.apptrace-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
   || [ apptrace/capture/_ringwalk.c -nt "$stamp" ]; then
  say "installing apptrace (editable) and test dependencies into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
  touch "$stamp"
fi
.venv/bin/python -c 'import bcc, elftools, duckdb, h2, apptrace.capture._ringwalk' \
  || { say "the venv cannot import its dependencies"; exit 1; }
say "ready: $root/.venv/bin/apptrace"
