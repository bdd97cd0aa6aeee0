#!/bin/sh
# What the test suite needs besides cargo:
# - the wasm32-wasip2 target (rustup does not add rust-toolchain.toml's targets to an
#   installed toolchain), for the guest components, and wasm32-wasip1, for the Rust core
#   modules;
# - clang, lld, wasi-libc and wasm32's compiler-rt builtins (Debian's packages), for the
#   C job and the C core modules;
# - the x86_64-unknown-linux-musl target and musl-gcc (musl-tools: wasmtime compiles a C
#   file), for the static runner the container tests put in an image;
# - componentize-py, kubernetes-validate and prometheus-client in .venv: the Python
#   example is built with the first, deploy/'s manifests are checked against the
#   Kubernetes API schema with the second, the runner's metrics parsed as OpenMetrics
#   with the third;
# - componentize-js, esbuild and TypeScript in guest-sdk/js/node_modules (npm ci, at the
#   versions of its package-lock.json), for the JavaScript example and test job;
# - strace, which the crash tests use to inject faults into the real runner;
# - s3s-fs, an S3-compatible server that honours conditional writes and keeps objects as
#   files, which the S3 store's tests start (cargo install: about 2 minutes, once);
# - buildah, umoci and runc, which build the image, unpack it and run it as a container.
# The tests also use unshare and mount (util-linux) and run as root, for the PID 1 test,
# the containers and the tests on a full or read-only file system.
set -eu
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 wasm32-wasip1 x86_64-unknown-linux-musl
componentize_py=0.25.1
kubernetes_validate=1.37.0
# Prometheus's own Python client: its parser checks the runner's metrics as OpenMetrics.
prometheus_client=0.26.0
if ! .venv/bin/componentize-py --version 2>/dev/null | grep -qx "componentize-py $componentize_py" ||
    ! .venv/bin/kubernetes-validate --version 2>/dev/null | grep -q "$kubernetes_validate" ||
    [ "$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("prometheus-client"))' 2>/dev/null)" != "$prometheus_client" ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check \
        "componentize-py==$componentize_py" "kubernetes-validate==$kubernetes_validate" \
        "prometheus-client==$prometheus_client"
fi
s3s_fs=0.14.1
if ! s3s-fs --version 2>/dev/null | grep -qx "s3s-fs $s3s_fs"; then
    # Not into the workspace's target directory: it is a tool, not part of the build.
    env -u CARGO_TARGET_DIR cargo install --quiet --locked s3s-fs --version "$s3s_fs" \
        --features binary
fi
missing=""
command -v npm >/dev/null 2>&1 || missing="$missing nodejs npm"
for tool in strace:strace musl-gcc:musl-tools runc:runc umoci:umoci buildah:buildah \
    redis-server:redis-server redis-cli:redis-tools; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing="$missing ${tool#*:}"
done
# A C program built for wasm32-wasi needs all four (printf's long double: compiler-rt).
if ! printf '#include <stdio.h>\nint main(void) { printf("%%Lf", (long double)1); }\n' |
    clang --target=wasm32-wasi -x c -o /dev/null - >/dev/null 2>&1; then
    missing="$missing clang lld wasi-libc libclang-rt-14-dev-wasm32"
fi
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq $missing
    else
        echo "the tests need:$missing; install them (Debian: apt-get install$missing)" >&2
        exit 1
    fi
fi
# Only when the lockfile changed: npm ci rewrites node_modules, and the guests' build
# script, which watches guest-sdk/, would build every guest again. No install scripts:
# the packages need none (esbuild's binary comes in its platform's package).
lock=guest-sdk/js/package-lock.json
installed=guest-sdk/js/node_modules/.runner-package-lock.json
if ! cmp -s "$lock" "$installed" 2>/dev/null; then
    (cd guest-sdk/js && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    cp "$lock" "$installed"
fi
