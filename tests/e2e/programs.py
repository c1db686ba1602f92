"""The Python programs of test_torch.py and test_numpy.py, run as separate
processes (a program that reads a model, as users run one), each printing
one JSON line:

    programs.py torch-info                   torch's version, whether torch.load
                                             has mmap=
    programs.py torch-write OUT.pt           write the state dict of Net
    programs.py torch-forward MODEL.pt [--mmap]
                                             torch.load it (mmap=True with
                                             --mmap), a forward pass on a fixed
                                             input: output and weight checksums
    programs.py torch-write-raw OUT.f32      the same weights as one raw
                                             float32 file (state_dict order)
    programs.py torch-from-file WEIGHTS.f32  map that file with torch.from_file,
                                             the same forward pass
    programs.py numpy-write OUT.f16          a float16 array (NUMPY_ELEMENTS)
    programs.py numpy-memmap FILE.f16        numpy.memmap of it, read in
                                             strides, windows and blocks

Everything is seeded and single-threaded, so equal input bytes give equal
output bytes; the tests compare the JSON of a run on the original file with
the JSON of a run on the same file read through a mount.
"""

import hashlib
import json
import sys

# Net: 1024 -> 2048 -> 1024 -> 1024, 5,246,976 float32 parameters (20.0 MiB)
LAYERS = [(1024, 2048), (2048, 1024), (1024, 1024)]
BATCH = 8
NUMPY_ELEMENTS = 24 * 1024 * 1024           # 48 MiB of float16
NUMPY_STRIDE = 2053                         # elements: 4,106 bytes, about a page apart
NUMPY_WINDOW = 4096                         # elements per random window
NUMPY_BLOCK = 1024 * 1024                   # elements per block of the backward pass


def sha(b):
    return hashlib.sha256(b).hexdigest()


def torch_net():
    import torch
    torch.set_num_threads(1)
    mods = []
    for i, (n_in, n_out) in enumerate(LAYERS):
        mods.append(torch.nn.Linear(n_in, n_out))
        if i + 1 < len(LAYERS):
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods).eval()


def torch_state():
    """Seeded weights: the first layer normal floats (nearly random bytes,
    which zstd barely compresses), the others 129 distinct values each
    (scaled integers -64..64, which zstd compresses to about half)."""
    import torch
    g = torch.Generator().manual_seed(20261205)
    state = {}
    for i, (n_in, n_out) in enumerate(LAYERS):
        idx = 2 * i        # Sequential index: Linear, ReLU, Linear, ...
        if i == 0:
            w = torch.randn(n_out, n_in, generator=g) / n_in ** 0.5
        else:
            w = torch.randint(-64, 65, (n_out, n_in), generator=g).float() / 256 / n_in ** 0.5 * 16
        state["%d.weight" % idx] = w
        state["%d.bias" % idx] = torch.randn(n_out, generator=g) / 16
    return state


def torch_forward(net):
    import torch
    x = torch.randn(BATCH, LAYERS[0][0], generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y = net(x).contiguous()
    return {"shape": list(y.shape), "dtype": str(y.dtype), "sha256": sha(y.numpy().tobytes()),
            "sum": float(y.double().sum()), "head": [float(v) for v in y.flatten()[:8]]}


def weights_digest(net):
    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        h.update(name.encode() + b"\0" + t.contiguous().numpy().tobytes())
    return h.hexdigest()


def cmd_torch_write(out):
    import torch
    torch.save(torch_state(), out)
    return {"written": out}


def cmd_torch_forward(path, mmap=False):
    import torch
    net = torch_net()
    kw = {"mmap": True} if mmap else {}
    state = torch.load(path, map_location="cpu", **kw)
    net.load_state_dict(state)
    return {"torch": torch.__version__, "weights_sha256": weights_digest(net),
            "output": torch_forward(net)}


def cmd_torch_write_raw(out):
    """The state dict's tensors in state_dict order as one float32 file."""
    net = torch_net()
    net.load_state_dict(torch_state())
    with open(out, "wb") as f:
        for t in net.state_dict().values():
            f.write(t.contiguous().numpy().astype("<f4").tobytes())
    return {"written": out}


def cmd_torch_from_file(path):
    """torch.from_file maps the file (shared=False: a private mapping) and
    the parameters are views of that mapping: the forward pass reads the
    weights by page faults, not by read()."""
    import torch
    net = torch_net()
    names = [(n, t.shape) for n, t in net.state_dict().items()]
    total = sum(s.numel() for _, s in names)
    flat = torch.from_file(path, shared=False, size=total, dtype=torch.float32)
    off = 0
    with torch.no_grad():
        for name, shape in names:
            mod, attr = name.split(".")
            view = flat[off:off + shape.numel()].view(shape)
            setattr(net[int(mod)], attr, torch.nn.Parameter(view, requires_grad=False))
            off += shape.numel()
    return {"torch": torch.__version__, "weights_sha256": weights_digest(net),
            "output": torch_forward(net)}


def cmd_numpy_write(out):
    """Half seeded integers on a 1/256 grid (compressible), half normal
    noise (barely compressible): both kinds of zstd block."""
    import numpy as np
    rng = np.random.default_rng(20261205)
    half = NUMPY_ELEMENTS // 2
    a = np.empty(NUMPY_ELEMENTS, dtype="<f2")
    a[:half] = rng.integers(-512, 513, half) / 256
    a[half:] = rng.standard_normal(NUMPY_ELEMENTS - half)
    a.tofile(out)
    return {"written": out}


def cmd_numpy_memmap(path):
    import numpy as np
    a = np.memmap(path, dtype="<f2", mode="r")
    n = a.shape[0]
    res = {"elements": int(n)}
    # 1. strided: one element about every page, front to back
    s = np.array(a[::NUMPY_STRIDE])
    res["strided"] = {"count": int(s.size), "sha256": sha(s.tobytes()),
                      "sum": float(s.astype(np.float64).sum())}
    # 2. windows at seeded random places, in that order
    rng = np.random.default_rng(5)
    h = hashlib.sha256()
    total = 0.0
    for off in rng.integers(0, n - NUMPY_WINDOW, 256):
        w = np.array(a[off:off + NUMPY_WINDOW])
        h.update(w.tobytes())
        total += float(w.astype(np.float64).sum())
    res["windows"] = {"sha256": h.hexdigest(), "sum": total}
    # 3. every element, in blocks from the end to the start
    h = hashlib.sha256()
    sums = []
    for start in range((n - 1) // NUMPY_BLOCK * NUMPY_BLOCK, -1, -NUMPY_BLOCK):
        b = np.array(a[start:start + NUMPY_BLOCK])
        h.update(b.tobytes())
        sums.append(float(b.astype(np.float64).sum()))
    res["blocks"] = {"count": len(sums), "sha256": h.hexdigest(), "sums_sha256":
                     sha(json.dumps(sums).encode()), "sum": sum(sums)}
    return res


def cmd_torch_info():
    import inspect
    import torch
    return {"version": torch.__version__,
            "load_mmap": "mmap" in inspect.signature(torch.load).parameters}


COMMANDS = {
    "torch-info": cmd_torch_info,
    "torch-write": cmd_torch_write,
    "torch-write-raw": cmd_torch_write_raw,
    "torch-forward": cmd_torch_forward,
    "torch-from-file": cmd_torch_from_file,
    "numpy-write": cmd_numpy_write,
    "numpy-memmap": cmd_numpy_memmap,
}


def main(argv):
    if not argv or argv[0] not in COMMANDS:
        print("usage: programs.py {%s} [PATH] [--mmap]" % ",".join(COMMANDS), file=sys.stderr)
        return 2
    fn, args, kw = COMMANDS[argv[0]], argv[1:], {}
    if argv[0] == "torch-forward" and args[1:] == ["--mmap"]:
        args, kw = args[:1], {"mmap": True}
    if len(args) != (0 if argv[0] == "torch-info" else 1):
        print("programs.py %s: wrong arguments %s" % (argv[0], args), file=sys.stderr)
        return 2
    print(json.dumps(fn(*args, **kw)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
