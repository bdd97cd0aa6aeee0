#!/bin/sh
# What the test suite needs besides cargo: the wasm32-wasip2 target (rustup does not add
# rust-toolchain.toml's targets to an installed toolchain), componentize-py in .venv
# (the Python example is built with it), and strace, which the crash tests use to
# inject faults into the real runner. The tests also use unshare and mount
# (util-linux) and run as root, for the PID 1 test and the tests on a full or read-only
# file system.
set -eu
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2
componentize_py=0.25.1
if ! .venv/bin/componentize-py --version 2>/dev/null | grep -qx "componentize-py $componentize_py"; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "componentize-py==$componentize_py"
fi
if ! command -v strace >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq strace
    else
        echo "the tests need strace: install it (Debian: apt-get install strace)" >&2
        exit 1
    fi
fi
