#!/usr/bin/env bash
# scripts/demo.sh - see apbundlefs page a real model through a small cache.
#
# Packs tesseract's tessdata (eng + osd traineddata, configs) into one
# .apbundle, mounts it with a 2 MiB budget (eng.traineddata alone is ~4 MiB,
# osd ~10 MiB), renders an image with text, runs an unmodified tesseract
# against the mount and shows what it read and what the cache did.
# Installs what is missing and builds first. Always unmounts and cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

BUILD_DIR=${BUILD_DIR:-build}
BUDGET=${BUDGET:-2M}
TESSDATA=/usr/share/tesseract-ocr/5/tessdata
PYTHON=/usr/bin/python3
PACKAGES=(meson ninja-build pkg-config gcc libfuse3-dev fuse3 libcjson-dev
          libxxhash-dev libzstd-dev libcurl4-openssl-dev python3 python3-pil fonts-dejavu-core
          tesseract-ocr tesseract-ocr-eng tesseract-ocr-osd)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Packages"
install_missing "${PACKAGES[@]}"

say "Building"
[ -f "$BUILD_DIR/build.ninja" ] || meson setup "$BUILD_DIR" >/dev/null
ninja -C "$BUILD_DIR" >/dev/null
APBUNDLE=$PWD/$BUILD_DIR/apbundle/apbundle
APBUNDLEFS=$PWD/$BUILD_DIR/fs/apbundlefs

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
}
trap cleanup EXIT INT TERM
mkdir -p "$MNT"

say "Packing $TESSDATA"
"$APBUNDLE" create "$WORK/tessdata.apbundle" "$TESSDATA"
"$APBUNDLE" list "$WORK/tessdata.apbundle"
ls -lh "$WORK/tessdata.apbundle" | awk '{print "bundle size: " $5}'

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
"$APBUNDLE" stats "$MNT" || cat "$MNT/.stats"

say "Unmounting"
kill -TERM "$DAEMON"
wait "$DAEMON" && echo "daemon exited cleanly" || echo "daemon exited with status $?"
DAEMON=
