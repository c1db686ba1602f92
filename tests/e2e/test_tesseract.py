"""An unmodified program (tesseract) reads its model through the mount.

tessdata is packed with `apbundle create DIR` (version 2, raw and zstd),
mounted with a cache (2 MiB) smaller than eng.traineddata (4,113,088
bytes), and tesseract recognizes a rendered image once from the system
tessdata and once from the mount: the two outputs must be identical and
contain the known words, and .stats must show evictions (the model really
was paged through the small cache).

tesseract is installed by scripts/test.sh, so its absence is a failure.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import mount, pack, run_apbundle

TESSDATA = Path("/usr/share/tesseract-ocr/5/tessdata")
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
LINES = ["The quick brown fox", "jumps over the lazy dog", "Bundles page models 2024"]
WORDS = ["quick", "brown", "fox", "jumps", "over", "lazy", "dog", "Bundles", "page", "models", "2024"]
ENG_SIZE = 4113088


def render(path):
    from PIL import Image, ImageDraw, ImageFont
    font = ImageFont.truetype(str(FONT), 56)
    img = Image.new("L", (1400, 80 + 100 * len(LINES)), 255)
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(LINES):
        draw.text((60, 40 + 100 * i), line, font=font, fill=0)
    img.save(path)
    return path


def ocr(image, tessdata_dir):
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    env.pop("TESSDATA_PREFIX", None)
    p = subprocess.run(["tesseract", str(image), "stdout", "--tessdata-dir", str(tessdata_dir),
                        "-l", "eng"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=120, env=env)
    assert p.returncode == 0, "tesseract failed (%d) with %s:\n%s" % (p.returncode, tessdata_dir, p.stderr)
    return p.stdout


def test_tesseract_is_installed():
    assert shutil.which("tesseract"), "tesseract-ocr is not installed (scripts/test.sh installs it)"
    assert (TESSDATA / "eng.traineddata").stat().st_size == ENG_SIZE
    assert FONT.is_file(), "fonts-dejavu-core is not installed"


@pytest.mark.timeout_s(300)
@pytest.mark.parametrize("compress", [None, "zstd"], ids=["v2-raw", "v2-zstd"])
def test_tesseract_through_mount_with_small_cache(tmp_path, binaries, compress):
    if not shutil.which("tesseract"):
        pytest.fail("tesseract-ocr is not installed (scripts/test.sh installs it)")
    image = render(tmp_path / "text.png")
    direct = ocr(image, TESSDATA)
    for w in WORDS:
        assert w in direct, "baseline OCR did not find %r:\n%s" % (w, direct)

    bundle = pack(tmp_path / "tessdata.apbundle", TESSDATA, compress=compress)
    listing = run_apbundle("list", bundle, check=True).stdout.splitlines()[1:]
    stored = {f[0]: int(f[2]) for f in (line.split() for line in listing)}["eng.traineddata"]
    if compress == "zstd":
        assert stored < ENG_SIZE * 0.9, "eng.traineddata did not compress: zstd blocks untested"
    with mount(bundle, {"max_memory": "2M", "chunk_size": "64K"}) as d:
        assert os.path.getsize(d.path("eng.traineddata")) == ENG_SIZE
        via_mount = ocr(image, d.mnt)
        s = d.stats()
    assert via_mount == direct
    eng = s["models"]["eng.traineddata"]
    assert s["cache"]["memory_limit"] == 2 * 1024 * 1024 < ENG_SIZE
    assert s["cache"]["evictions"] > 0, "no eviction: the cache did not page"
    assert s["cache"]["memory_used"] <= s["cache"]["memory_limit"]
    assert eng["opens"] >= 1
    # every chunk tesseract read was loaded, on demand or by prefetch
    assert eng["misses"] + eng["prefetch_issued"] >= (ENG_SIZE + 65535) // 65536, \
        "not every chunk was loaded"
    assert s["io"]["backing_bytes_read"] >= stored
    assert s["io"]["errors"] == 0
