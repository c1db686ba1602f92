#!/usr/bin/env bash
# scripts/demo.sh - see apbundlefs page a real model through a small cache.
#
# Packs tesseract's tessdata (eng + osd traineddata, configs) into one
# .apbundle, mounts it with a 2 MiB budget (eng.traineddata alone is ~4 MiB,
# osd ~10 MiB), renders an image with text, runs an unmodified tesseract
# against the mount and shows what it read and what the cache did.
# Installs what is missing and builds first. Always unmounts and cleans up.
# Output: one line per step; what apt, dpkg, meson and ninja print goes to
# a log whose last lines are shown only when a step fails. Colour only when
# stdout is a terminal and NO_COLOR (https://no-color.org) is unset or empty.
# BUILD_DIR may be relative to the repository or absolute.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

BUILD_DIR=${BUILD_DIR:-build}
case $BUILD_DIR in
/*) ;;
*) BUILD_DIR=$PWD/$BUILD_DIR ;;
esac
BUDGET=${BUDGET:-2M}
TESSDATA=/usr/share/tesseract-ocr/5/tessdata
PYTHON=/usr/bin/python3
PACKAGES=(meson ninja-build pkg-config gcc libfuse3-dev fuse3 libcjson-dev
          libxxhash-dev libzstd-dev libcurl4-openssl-dev python3 python3-pil fonts-dejavu-core
          tesseract-ocr tesseract-ocr-eng tesseract-ocr-osd)

if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
    BOLD=$'\033[1m' RED=$'\033[31m' OFF=$'\033[0m'
else
    BOLD='' RED='' OFF=''
fi
say() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$OFF"; }

# quietly WHAT CMD...: run CMD with its output in $LOG; one line saying
# WHAT; on failure the last 25 lines of the log, and exit with CMD's status.
LOG=$(mktemp /tmp/apbundlefs-demo-log.XXXXXX)
quietly() {
    local what=$1 rc=0
    shift
    printf '%s ... ' "$what"
    "$@" >>"$LOG" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "done"
        return 0
    fi
    printf '%sfailed (exit %d)%s; the last lines of %s:\n' "$RED" "$rc" "$OFF" "$LOG"
    tail -n 25 "$LOG" | sed 's/^/    /'
    exit "$rc"   # the log stays for a look: the cleanup trap is not set yet
}

say "Packages"
missing_of "${PACKAGES[@]}"
if [ ${#MISSING[@]} -eq 0 ]; then
    echo "all ${#PACKAGES[@]} packages present"
else
    quietly "installing ${MISSING[*]}" install_missing "${MISSING[@]}"
fi

say "Building in $BUILD_DIR"
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
    quietly "meson setup" meson setup "$BUILD_DIR"
fi
quietly "ninja" ninja -C "$BUILD_DIR"
APBUNDLE=$BUILD_DIR/apbundle/apbundle
APBUNDLEFS=$BUILD_DIR/fs/apbundlefs

WORK=$(mktemp -d /tmp/apbundlefs-demo.XXXXXX)
MNT=$WORK/mnt
DAEMON=
cleanup() {
    if grep -qs " $MNT fuse" /proc/mounts; then
        fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -uz "$MNT" 2>/dev/null || true
    fi
    if [ -n "$DAEMON" ] && kill -0 "$DAEMON" 2>/dev/null; then
        kill -TERM "$DAEMON" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$DAEMON" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    rm -f "$LOG"
}
trap cleanup EXIT INT TERM
mkdir -p "$MNT"

say "Packing $TESSDATA"
"$APBUNDLE" create --progress=none "$WORK/tessdata.apbundle" "$TESSDATA" 2>&1
"$APBUNDLE" list "$WORK/tessdata.apbundle"

say "Mounting with max_memory=$BUDGET, chunk_size=64K"
"$APBUNDLEFS" -f -o "max_memory=$BUDGET,chunk_size=64K" \
    "$WORK/tessdata.apbundle" "$MNT" 2>"$WORK/daemon.log" &
DAEMON=$!
for _ in $(seq 100); do
    grep -qs " $MNT fuse" /proc/mounts && break
    kill -0 "$DAEMON" 2>/dev/null || { cat "$WORK/daemon.log" >&2; exit 1; }
    sleep 0.1
done
grep -qs " $MNT fuse" /proc/mounts || { echo "mount did not appear" >&2; exit 1; }
ls -l "$MNT"

say "Rendering a sample image"
"$PYTHON" - "$WORK/sample.png" <<'PY'
import sys
from PIL import Image, ImageDraw, ImageFont
lines = ["apbundlefs serves models", "from a small page cache.", "Hello, tesseract!"]
font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 56)
img = Image.new("L", (1300, 80 + 100 * len(lines)), 255)
d = ImageDraw.Draw(img)
for i, line in enumerate(lines):
    d.text((60, 40 + 100 * i), line, font=font, fill=0)
img.save(sys.argv[1])
print("text in the image:")
for line in lines:
    print("   ", line)
PY

say "tesseract, reading eng.traineddata through the mount"
OMP_THREAD_LIMIT=1 tesseract "$WORK/sample.png" stdout --tessdata-dir "$MNT" -l eng 2>/dev/null \
    | sed '/^\s*$/d; s/^/    /'

say "What the cache did"
# The table shows the models tesseract read (those with chunk lookups),
# most read first, not every model of the bundle by resident bytes.
READ=$("$PYTHON" -c 'import json, sys
m = json.load(open(sys.argv[1]))["models"].values()
print(sum(1 for v in m if v.get("hits", 0) + v.get("misses", 0) > 0))' "$MNT/.stats")
"$APBUNDLE" stats --top "$(( READ > 0 ? READ : 1 ))" "$MNT"

say "Unmounting"
kill -TERM "$DAEMON"
wait "$DAEMON" && echo "daemon exited cleanly" || echo "daemon exited with status $?"
DAEMON=
