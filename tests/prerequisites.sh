#!/bin/sh
# What the test suite needs besides cargo: the wasm32-wasip2 target (rustup does not add
# rust-toolchain.toml's targets to an installed toolchain) and strace, which the crash
# tests use to inject faults into the real runner. The tests also use unshare and mount
# (util-linux) and run as root, for the PID 1 test and the tests on a full or read-only
# file system.
set -eu
rustup target add wasm32-wasip2
if ! command -v strace >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq strace
    else
        echo "the tests need strace: install it (Debian: apt-get install strace)" >&2
        exit 1
    fi
fi
