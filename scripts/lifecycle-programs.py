#!/usr/bin/python3
"""The Python programs of scripts/lifecycle, run as separate processes, each
printing one JSON line with its load time, its first inference's time and a
digest of its output (equal model bytes give an equal digest):

    lifecycle-programs.py torch-write OUT.pt WIDTH DEPTH
    lifecycle-programs.py torch MODEL.pt WIDTH DEPTH
        torch.load of the state dict (load), a forward pass (first inference)
    lifecycle-programs.py numpy-write OUT.f16 ELEMENTS
    lifecycle-programs.py numpy FILE.f16
        numpy.memmap and one element read from every page, front to back
        (load), then 256 random windows (first inference)
    lifecycle-programs.py tesseract-image OUT.png
        the image scripts/lifecycle has tesseract recognize

The models and the passes are those of tests/e2e/programs.py (the e2e
tests' runners), with its network widened to DEPTH layers of WIDTH x WIDTH
and its array to ELEMENTS, so that the model is larger than the one the
tests use.
"""
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests", "e2e"))
import programs  # noqa: E402  (tests/e2e/programs.py)

PAGE_ELEMENTS = 4096 // 2  # float16 elements per 4 KiB page


def widen(width, depth):
    programs.LAYERS = [(int(width), int(width))] * int(depth)


def torch_write(out, width, depth):
    widen(width, depth)
    return programs.cmd_torch_write(out)


def torch_run(path, width, depth):
    widen(width, depth)
    import torch
    net = programs.torch_net()
    t0 = time.perf_counter()
    state = torch.load(path, map_location="cpu")
    net.load_state_dict(state)
    t1 = time.perf_counter()
    out = programs.torch_forward(net)
    t2 = time.perf_counter()
    return {"load_s": t1 - t0, "infer_s": t2 - t1, "digest": out["sha256"]}


def numpy_write(out, elements):
    programs.NUMPY_ELEMENTS = int(elements)
    return programs.cmd_numpy_write(out)


def numpy_run(path):
    import numpy as np
    t0 = time.perf_counter()
    a = np.memmap(path, dtype="<f2", mode="r")
    pages = np.array(a[::PAGE_ELEMENTS])   # every page faulted in once
    t1 = time.perf_counter()
    rng = np.random.default_rng(5)
    h = hashlib.sha256(pages.tobytes())
    for off in rng.integers(0, a.shape[0] - programs.NUMPY_WINDOW, 256):
        h.update(np.array(a[off:off + programs.NUMPY_WINDOW]).tobytes())
    t2 = time.perf_counter()
    return {"load_s": t1 - t0, "infer_s": t2 - t1, "digest": h.hexdigest()}


def tesseract_image(out):
    from PIL import Image, ImageDraw, ImageFont
    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 56)
    lines = ["The quick brown fox", "jumps over the lazy dog", "Bundles page models 2024"]
    img = Image.new("L", (1400, 80 + 100 * len(lines)), 255)
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((60, 40 + 100 * i), line, font=font, fill=0)
    img.save(out)
    return {"written": out}


COMMANDS = {"torch-write": (torch_write, 3), "torch": (torch_run, 3),
            "numpy-write": (numpy_write, 2), "numpy": (numpy_run, 1),
            "tesseract-image": (tesseract_image, 1)}


def main(argv):
    if not argv or argv[0] not in COMMANDS or len(argv) - 1 != COMMANDS[argv[0]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(COMMANDS[argv[0]][0](*argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
