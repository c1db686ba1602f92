"""Pure-Python writers (and a small reader) for the .apbundle layouts.

The tests use these to build bundles independently of `apbundle create`, and
above all to craft malformed bundles byte by byte: every knob a validation rule
looks at (magic, version, manifest length, manifest bytes, offsets, sizes,
checksums, names, truncation) can be overridden.

Layouts (SPEC §2):

v1        "APBUNDLE" | u32 version=1 | u32 manifest length N | N bytes JSON |
          model data, each model at an absolute offset that is a multiple of
          4096, gaps zero.
aprender  "APBUNDLE" | u32 version=1 | u64 manifest length N | binary manifest
          (u32 version, u64 created_at, u32 desc len + desc, u32 count, per
          model u32 name len + name, u64 size, u64 offset) | packed data;
          offsets are relative to the end of the manifest.

XXH3-64 comes from the system libxxhash (the same library the C code links),
loaded with ctypes, so no Python package beyond the standard library is
needed.
"""

import ctypes
import ctypes.util
import json
import os
import struct

MAGIC = b"APBUNDLE"
ALIGN = 4096
HEADER_V1 = 16


def _load_xxhash():
    for name in ("libxxhash.so.0", ctypes.util.find_library("xxhash"), "libxxhash.so"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.XXH3_64bits.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.XXH3_64bits.restype = ctypes.c_uint64
        return lib
    raise RuntimeError("libxxhash (Debian package libxxhash0) is not installed")


_XXH = _load_xxhash()


def xxh3_64(data) -> int:
    """XXH3-64 (seed 0) of a bytes-like object."""
    if not isinstance(data, bytes):
        data = bytes(data)
    return _XXH.XXH3_64bits(data, len(data))


def checksum_str(data) -> str:
    return "xxh3-64:%016x" % xxh3_64(data)


def align_up(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


def random_bytes(size: int, seed: int) -> bytes:
    """Deterministic pseudo-random bytes (numpy when present: fast for 64 MiB)."""
    try:
        import numpy as np
        return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    except ImportError:  # pragma: no cover - numpy is a declared test dependency
        import random
        return random.Random(seed).randbytes(size)


class V1Bundle:
    """A v1 bundle under construction.

    models: list of (name, bytes). Offsets are assigned in order, each aligned
    to 4096, starting at data_start (default: the first 4096 boundary after the
    manifest plus `slack` spare bytes, so that mutated manifests still fit).

    entries: the manifest's model objects (dicts), ready for mutation.
    doc: the manifest document {"model_count": n, "models": entries}.
    """

    def __init__(self, models, data_start=None, slack=1024):
        self.models = [(n, bytes(d)) for n, d in models]
        self.entries = []
        probe = {"model_count": len(self.models),
                 "models": [{"name": n, "offset": 2**40, "size": 2**40,
                             "checksum": "xxh3-64:" + "0" * 16} for n, _ in self.models]}
        if data_start is None:
            data_start = align_up(HEADER_V1 + len(json.dumps(probe).encode()) + slack)
        self.data_start = data_start
        off = data_start
        for name, data in self.models:
            self.entries.append({"name": name, "offset": off, "size": len(data),
                                 "checksum": checksum_str(data)})
            off = align_up(off + len(data))
        self.doc = {"model_count": len(self.models), "models": self.entries}
        # Where each model's bytes are physically written (independent of
        # what a mutated manifest later claims).
        self.placement = [e["offset"] for e in self.entries]

    def manifest_bytes(self) -> bytes:
        return json.dumps(self.doc, ensure_ascii=False).encode("utf-8")

    def to_bytes(self, *, magic=MAGIC, version=1, manifest=None, manifest_len=None,
                 truncate=None, extra_tail=b"") -> bytes:
        man = self.manifest_bytes() if manifest is None else manifest
        n = len(man) if manifest_len is None else manifest_len
        head = magic + struct.pack("<II", version, n) + man
        end = max([HEADER_V1 + len(man)] +
                  [p + len(d) for p, (_, d) in zip(self.placement, self.models)])
        out = bytearray(end)
        for p, (_, d) in zip(self.placement, self.models):
            out[p:p + len(d)] = d
        # The header/manifest is written last and wins over model bytes only
        # in deliberately overlapping crafted cases.
        out[0:len(head)] = head
        out += extra_tail
        if truncate is not None:
            del out[truncate:]
        return bytes(out)

    def write(self, path, **kw):
        with open(path, "wb") as f:
            f.write(self.to_bytes(**kw))
        return path


def write_v1(path, models, **kw):
    """Write a valid v1 bundle of models [(name, bytes)] to path."""
    return V1Bundle(models).write(path, **kw)


def aprender_bytes(models, *, description=b"written by tests", created_at=1700000000,
                   manifest_version=1, file_version=1, manifest_len=None,
                   offsets=None, sizes=None, truncate=None) -> bytes:
    """aprender's binary layout; offsets/sizes may be overridden per model."""
    man = bytearray()
    man += struct.pack("<IQ", manifest_version, created_at)
    man += struct.pack("<I", len(description)) + description
    man += struct.pack("<I", len(models))
    rel = 0
    data = bytearray()
    for i, (name, d) in enumerate(models):
        nb = name.encode("utf-8") if isinstance(name, str) else name
        size = len(d) if sizes is None else sizes[i]
        off = rel if offsets is None else offsets[i]
        man += struct.pack("<I", len(nb)) + nb + struct.pack("<QQ", size, off)
        data += d
        rel += len(d)
    n = len(man) if manifest_len is None else manifest_len
    out = MAGIC + struct.pack("<IQ", file_version, n) + bytes(man) + bytes(data)
    if truncate is not None:
        out = out[:truncate]
    return out


def write_aprender(path, models, **kw):
    with open(path, "wb") as f:
        f.write(aprender_bytes(models, **kw))
    return path


def read_v1_manifest(path):
    """Parse a v1 bundle's header and manifest (no validation beyond that)."""
    with open(path, "rb") as f:
        head = f.read(HEADER_V1)
        magic, (version, n) = head[:8], struct.unpack("<II", head[8:16])
        doc = json.loads(f.read(n))
    return magic, version, n, doc


def model_bytes_v1(path, entry) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), entry["size"], entry["offset"])
