#!/usr/bin/env bash
# scripts/fuzz.sh - build the libFuzzer target over the bundle reader and
# run it for SECONDS (default 60) on a copy of the seed corpus.
#
#   bash scripts/fuzz.sh [SECONDS] [EXTRA LIBFUZZER ARGS...]
#
# Fails (non-zero) on any crash, sanitizer report, leak, timeout or
# out-of-memory; the input that did it is kept in $FUZZ_ARTIFACTS (default
# build-fuzz/artifacts/) and its path printed. The repository's corpus
# (tests/fuzz/corpus/) is never modified: the run mutates a private copy,
# whose new inputs are kept in build-fuzz/corpus-<date>/ with KEEP_CORPUS=1.
# Installs clang and the libFuzzer runtime if missing (Debian 12, as root).
#
# Environment: FUZZ_BUILD_DIR (default build-fuzz), FUZZ_ARTIFACTS,
# KEEP_CORPUS=1, FUZZ_NICE (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

SECONDS_TO_RUN=${1:-60}
shift || true
BUILD_DIR=${FUZZ_BUILD_DIR:-build-fuzz}
ARTIFACTS=${FUZZ_ARTIFACTS:-$BUILD_DIR/artifacts}

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
# The library's own build dependencies, then clang, libFuzzer's runtime
# and the symbolizer.
install_missing meson ninja-build pkg-config libfuse3-dev libcjson-dev libxxhash-dev \
    libzstd-dev libcurl4-openssl-dev clang
install_clang_runtime
export PATH="$PATH:/usr/lib/llvm-$CLANG_MAJOR/bin"   # llvm-symbolizer for stacks

step "configure ($BUILD_DIR: clang, -Dfuzz=true, ASan + UBSan)"
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
    rm -rf "$BUILD_DIR"
    # b_lundef=false: clang links the ASan runtime into executables only,
    # so the shared library has undefined __asan_* symbols until then.
    CC=clang CXX=clang++ meson setup "$BUILD_DIR" -Dfuzz=true -Dwerror=true \
        -Db_sanitize=address,undefined -Db_lundef=false
fi

step "build"
ninja -C "$BUILD_DIR" tests/fuzz/fuzz_bundle

step "fuzz for ${SECONDS_TO_RUN}s"
work=$(mktemp -d /tmp/apbundle-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp -r tests/fuzz/corpus "$work/corpus"
mkdir -p "$ARTIFACTS"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
rc=0
# One process (the machine is shared); inputs up to 64 KiB hold a few small
# models of every layout; a 10 s input or 2 GiB of RSS is a finding.
nice -n "${FUZZ_NICE:-10}" "$BUILD_DIR/tests/fuzz/fuzz_bundle" \
    -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 \
    -dict=tests/fuzz/bundle.dict -artifact_prefix="$ARTIFACTS/" \
    "$@" "$work/corpus" || rc=$?
if [ "${KEEP_CORPUS:-0}" = 1 ]; then
    keep="$BUILD_DIR/corpus-$(date -u +%Y%m%dT%H%M%S)"
    cp -r "$work/corpus" "$keep"
    echo "working corpus kept in $keep"
fi
if [ "$rc" -ne 0 ]; then
    echo "error: fuzz_bundle failed (exit $rc); inputs in $ARTIFACTS:" >&2
    ls -l "$ARTIFACTS" >&2 || true
    exit "$rc"
fi
echo "fuzzing: no finding in ${SECONDS_TO_RUN}s"
