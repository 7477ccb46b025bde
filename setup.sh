#!/usr/bin/env bash
# Sets up everything threadlib needs on a fresh Debian machine, idempotently:
# the Debian packages (libaio1 for Linux AIO, iproute2 and iputils-ping for the TUN/netns
# tests, nftables for the kernel packet-loss tests, curl, wrk and openssl for the interop
# tests, redis-server for the redis.asyncio test, which starts its own; gcc and libc6-dev
# to build the optional compiled run loop, linux-libc-dev for linux/io_uring.h, the ABI the
# optional io_uring ring is built against) and a venv in .venv with the package and its test
# extras installed.  Run as root (CI is).
set -euo pipefail
cd "$(dirname "$0")"
need=()
for pkg in libaio1 iproute2 iputils-ping nftables curl wrk openssl redis-server gcc libc6-dev linux-libc-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# Debian's own Python keeps its headers in a separate package.
if ! python3 -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    need+=("python3-dev")
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q -e ".[test]"
.venv/bin/python -c 'import threadlib.lowlevel as l; print("setup: compiled run loop", "built" if l.COMPILED else "NOT built (pure Python: no C compiler or Python headers?)"); print("setup: io_uring", l.uring_unavailable_reason() or "usable (THREADLIB_IO=uring)")' 
