#!/usr/bin/env bash
# scripts/test.sh - install what is missing, build with warnings as errors,
# run the C unit tests and the end-to-end tests. Idempotent; runs as root,
# non-interactively, on a fresh Debian 12 (also from a fresh clone).
#
#   bash scripts/test.sh [PYTEST ARGS...]     e.g. -k stats, -x
#
# Environment: BUILD_DIR (default build), PYTEST_TIMEOUT (seconds, default 540).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
BUILD_DIR=${BUILD_DIR:-build}
PYTEST_TIMEOUT=${PYTEST_TIMEOUT:-540}
PYTHON=/usr/bin/python3          # the Debian interpreter that sees python3-* packages

PACKAGES=(meson ninja-build pkg-config gcc libfuse3-dev fuse3 libcjson-dev
          libxxhash-dev libzstd-dev python3 python3-pytest python3-psutil
          python3-numpy python3-pil fonts-dejavu-core tesseract-ocr
          tesseract-ocr-eng)

step() { printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

step "dependencies"
missing=()
installed() {   # dpkg -s alone also succeeds for removed-but-not-purged packages
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}
for p in "${PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "all ${#PACKAGES[@]} packages present"
fi
if [ ! -e /dev/fuse ]; then
    echo "error: /dev/fuse is missing; the end-to-end tests need FUSE" >&2
    exit 1
fi

step "configure ($BUILD_DIR, -Dwerror=true)"
if [ -f "$BUILD_DIR/build.ninja" ]; then
    werror=$(meson introspect --buildoptions "$BUILD_DIR" | "$PYTHON" -c \
        'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"] == "werror"][0])')
    [ "$werror" = "True" ] || meson configure "$BUILD_DIR" -Dwerror=true
else
    rm -rf "$BUILD_DIR"
    meson setup "$BUILD_DIR" -Dwerror=true
fi

step "build"
ninja -C "$BUILD_DIR"

step "unit tests"
unit_rc=0
meson test -C "$BUILD_DIR" --print-errorlogs || unit_rc=$?

step "end-to-end tests"
# A private temp root: whatever a killed run leaves there (mounts, daemons)
# is found and cleaned up below, and nothing else on the machine is touched.
E2E_TMP=$(mktemp -d /tmp/apbundlefs-e2e.XXXXXX)
cleanup() {
    # first daemons started on files below E2E_TMP (matched by that unique
    # path): killing a hung daemon also unblocks its mount
    local f pid
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}; pid=${pid%/cmdline}
        [ "$pid" != "$$" ] || continue
        if tr '\0' ' ' <"$f" 2>/dev/null | grep -q "^[^ ]*apbundlefs .*$E2E_TMP"; then
            echo "cleanup: killing leftover daemon $pid" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    # then fuse mounts below E2E_TMP, deepest first; lazy unmount as a fallback
    local line left right mp
    while IFS= read -r line; do
        left=${line%% - *}; right=${line#* - }
        mp=$(cut -d' ' -f5 <<<"$left")
        case "${right%% *}" in fuse*) ;; *) continue ;; esac
        case "$mp" in "$E2E_TMP"/*) echo "$mp" ;; esac
    done </proc/self/mountinfo | sort -r | while read -r m; do
        echo "cleanup: unmounting leftover $m" >&2
        fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || true
    done
    rm -rf "$E2E_TMP" 2>/dev/null || true
}
trap cleanup EXIT

rc=0
APB_BUILD_DIR="$PWD/$BUILD_DIR" timeout -k 30 "$PYTEST_TIMEOUT" \
    "$PYTHON" -m pytest -q -rfEs -p no:cacheprovider --basetemp="$E2E_TMP/pytest" \
    tests/e2e "$@" || rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "error: end-to-end tests did not finish within ${PYTEST_TIMEOUT}s" >&2
fi
if [ "$unit_rc" -ne 0 ]; then
    echo "error: unit tests failed (meson test exit $unit_rc)" >&2
    [ "$rc" -ne 0 ] || rc=$unit_rc
fi
[ "$rc" -eq 0 ] && echo "all tests passed"
exit "$rc"
