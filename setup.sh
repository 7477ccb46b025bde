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
# Each newer Python this machine has (pyenv's 3.12 and 3.13 here; none is needed) gets its own
# venv, .venv-py3.N, with the package built for it and the test extras: the asyncio loop's tests
# run on every one of them (tests/threadlib/test_loop_pythons.py finds them the same way).
pids=()
for minor in 12 13 14 15; do
    py=""
    if command -v "python3.$minor" >/dev/null 2>&1 && "python3.$minor" -V >/dev/null 2>&1; then
        py="python3.$minor"
    else
        for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3."$minor".*/bin/python3."$minor"; do
            [ -x "$candidate" ] && py="$candidate"
        done
    fi
    [ -n "$py" ] || continue
    echo "setup: Python 3.$minor found ($py): .venv-py3.$minor"
    [ -x ".venv-py3.$minor/bin/python" ] || "$py" -m venv ".venv-py3.$minor"
    ( ".venv-py3.$minor/bin/pip" install -q -e ".[test]" >".venv-py3.$minor/setup.log" 2>&1 \
        || { tail -20 ".venv-py3.$minor/setup.log"; exit 1; } ) &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
.venv/bin/python -c 'import threadlib.lowlevel as l; print("setup: compiled run loop", "built" if l.COMPILED else "NOT built (pure Python: no C compiler or Python headers?)"); print("setup: io_uring", l.uring_unavailable_reason() or "usable (THREADLIB_IO=uring)")' 
