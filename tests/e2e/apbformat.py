"""Pure-Python writers (and a small reader) for the .apbundle layouts.

The tests use these to build bundles independently of `apbundle create`, and
above all to craft malformed bundles byte by byte: every knob a validation rule
looks at (magic, version, manifest length, manifest bytes, offsets, sizes,
checksums, names, truncation) can be overridden.

Layouts (docs/FORMAT.md):

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


def _load_lib(short, package, signatures):
    """The first of libSHORT's names that loads, its functions typed as
    signatures says: {name: (restype, [argtypes])}."""
    for name in ("lib%s.so.%s" % (short, package[-1]), ctypes.util.find_library(short),
                 "lib%s.so" % short):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        for fn, (res, args) in signatures.items():
            getattr(lib, fn).restype = res
            getattr(lib, fn).argtypes = args
        return lib
    raise RuntimeError("lib%s (Debian package %s) is not installed" % (short, package))


def _load_xxhash():
    return _load_lib("xxhash", "libxxhash0", {
        "XXH3_64bits": (ctypes.c_uint64, [ctypes.c_void_p, ctypes.c_size_t])})


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


class _Bundle:
    """What every layout's writer shares: to_bytes(**knobs) to a file."""

    def write(self, path, **kw):
        with open(path, "wb") as f:
            f.write(self.to_bytes(**kw))
        return path


class V1Bundle(_Bundle):
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


# --------------------------------------------------------------------------
# version 2: blocks, an XXH3 per block, optional zstd per model (docs/FORMAT.md).
# The manifest keys keep the format's spelling: "chunk_table" is the block
# table, "chunk_size" a model's block size, "first_chunk" its first entry.

HEADER_V2 = 16
ENTRY_V2 = 24
FLAG_ZSTD = 1


def v2_with_defaults(doc, entries, manifest_end):
    """A copy of v2 manifest doc whose models spell every key: one that is
    left out takes its default (docs/FORMAT.md). "compression" and
    "chunk_size" are the top level's ("none" and 65536 when it has none),
    "first_chunk" the entry after the previous model's blocks, "offset" and
    "stored_size" the extent of the model's blocks in entries (the table:
    (offset, length, ...) tuples), an empty model's manifest_end (16 +
    the manifest's length) and 0."""
    doc = json.loads(json.dumps(doc))
    comp, bs, nxt = doc.get("compression", "none"), doc.get("chunk_size", 65536), 0
    for m in doc["models"]:
        m.setdefault("compression", comp)
        m.setdefault("chunk_size", bs)
        m.setdefault("first_chunk", nxt)
        nxt = m["first_chunk"] + -(-m["size"] // m["chunk_size"])
        if m["size"] == 0:
            m.setdefault("offset", manifest_end)
            m.setdefault("stored_size", 0)
            continue
        first, last = entries[m["first_chunk"]], entries[nxt - 1]
        m.setdefault("offset", first[0])
        m.setdefault("stored_size", last[0] + last[1] - m["offset"])
    return doc


def read_v2_manifest(path):
    """A version 2 bundle's manifest, its defaults spelled out
    (v2_with_defaults()), and its table entries."""
    with open(path, "rb") as f:
        head = f.read(HEADER_V2)
        magic, (version, n) = head[:8], struct.unpack("<II", head[8:16])
        assert (magic, version) == (MAGIC, 2), (magic, version)
        doc = json.loads(f.read(n))
        t = doc["chunk_table"]
        f.seek(t["offset"])
        entries = list(struct.iter_unpack("<QIIQ", f.read(ENTRY_V2 * t["count"])))
    return v2_with_defaults(doc, entries, HEADER_V2 + n), entries


def _load_zstd():
    size, ptr = ctypes.c_size_t, ctypes.c_void_p
    return _load_lib("zstd", "libzstd1", {
        "ZSTD_compressBound": (size, [size]),
        "ZSTD_compress": (size, [ptr, size, ptr, size, ctypes.c_int]),
        "ZSTD_decompress": (size, [ptr, size, ptr, size]),
        "ZSTD_isError": (ctypes.c_uint, [size])})


_ZSTD = _load_zstd()


def zstd_bound(n: int) -> int:
    return _ZSTD.ZSTD_compressBound(n)


def zstd_compress(data: bytes, level: int = 3) -> bytes:
    """One zstd frame (content size in the header) of data."""
    cap = zstd_bound(len(data))
    out = ctypes.create_string_buffer(cap)
    n = _ZSTD.ZSTD_compress(out, cap, bytes(data), len(data), level)
    if _ZSTD.ZSTD_isError(n):
        raise RuntimeError("ZSTD_compress failed")
    return out.raw[:n]


def zstd_decompress(frame: bytes, size: int) -> bytes:
    out = ctypes.create_string_buffer(max(size, 1))
    n = _ZSTD.ZSTD_decompress(out, size, bytes(frame), len(frame))
    if _ZSTD.ZSTD_isError(n):
        raise ValueError("not a zstd frame of %d bytes" % size)
    return out.raw[:n]


def compressible_bytes(size: int, seed: int) -> bytes:
    """Bytes zstd shrinks a lot but not to nothing: random words of a small
    alphabet."""
    words = [random_bytes(8, seed * 1000 + i) for i in range(16)]
    picks = random_bytes((size + 7) // 8, seed)
    return b"".join(words[p & 15] for p in picks)[:size]


class V2Bundle(_Bundle):
    """A version 2 bundle under construction.

    models: list of (name, bytes) or (name, bytes, {"compression": ...,
    "block_size": ...}); the keyword arguments are the defaults. Models are
    laid out in name order from data_start (first 4096 boundary after the
    reserved manifest plus `slack`). A "zstd" model stores each block as a
    frame when that is smaller, else raw and 4096-aligned; `force_raw` /
    `force_zstd` (sets of (name, block index)) override that choice.

    Ready for mutation before to_bytes():
      entries  the manifest's model dicts (doc["models"])
      doc      the whole manifest document
      blocks   the table entries: dicts offset, length, flags, xxh3
      blobs    [(file offset, bytes)] of every stored block
    """

    def __init__(self, models, compression="none", block_size=65536, level=3,
                 force_raw=(), force_zstd=(), data_start=None, slack=256):
        ms = []
        for m in models:
            opt = dict(compression=compression, block_size=block_size)
            if len(m) > 2:
                opt.update(m[2])
            ms.append((m[0], bytes(m[1]), opt))
        ms.sort(key=lambda m: m[0].encode("utf-8") if isinstance(m[0], str) else m[0])
        self.models = ms
        wide = 2**53 - 1
        probe = {"model_count": len(ms),
                 "chunk_table": {"offset": wide, "count": wide, "checksum": "xxh3-64:" + "0" * 16},
                 "models": [{"name": n, "size": wide, "checksum": "xxh3-64:" + "0" * 16,
                             "offset": wide, "stored_size": wide, "compression": o["compression"],
                             "chunk_size": wide, "first_chunk": wide} for n, _, o in ms]}
        self.reserved = len(json.dumps(probe, ensure_ascii=False).encode()) + slack
        self.data_start = (align_up(HEADER_V2 + self.reserved) if data_start is None
                           else data_start)
        self.entries, self.blocks, self.blobs = [], [], []
        pos = self.data_start
        for name, data, o in ms:
            bs, comp = o["block_size"], o["compression"]
            first, start = len(self.blocks), None
            for i in range(0, (len(data) + bs - 1) // bs):
                raw = data[i * bs:(i + 1) * bs]
                frame = zstd_compress(raw, level) if comp == "zstd" else None
                use_zstd = frame is not None and len(frame) < len(raw)
                if (name, i) in force_raw:
                    use_zstd = False
                if (name, i) in force_zstd:
                    frame, use_zstd = zstd_compress(raw, level), True
                if not use_zstd:
                    pos = align_up(pos)
                stored = frame if use_zstd else raw
                if start is None:
                    start = pos
                self.blocks.append({"offset": pos, "length": len(stored),
                                    "flags": FLAG_ZSTD if use_zstd else 0,
                                    "xxh3": xxh3_64(raw)})
                self.blobs.append((pos, stored))
                pos += len(stored)
            if start is None:
                start = align_up(pos) if comp == "none" else pos
            self.entries.append({"name": name, "size": len(data), "checksum": checksum_str(data),
                                 "offset": start, "stored_size": pos - start if data else 0,
                                 "compression": comp, "chunk_size": bs, "first_chunk": first})
            if comp == "none":
                pos = align_up(pos)
        self.table_offset = align_up(pos, 8)
        self.doc = {"model_count": len(ms),
                    "chunk_table": {"offset": self.table_offset, "count": len(self.blocks),
                                    "checksum": None},
                    "models": self.entries}

    def model(self, name):
        """The manifest entry (dict) of model name."""
        return next(e for e in self.entries if e["name"] == name)

    def entry(self, name, k):
        """The table entry (dict) of block k of model name."""
        return self.blocks[self.model(name)["first_chunk"] + k]

    def table_bytes(self):
        return b"".join(struct.pack("<QIIQ", c["offset"], c["length"], c["flags"], c["xxh3"])
                        for c in self.blocks)

    def manifest_bytes(self, pad=True):
        doc = json.loads(json.dumps(self.doc))
        if doc["chunk_table"].get("checksum", "") is None:
            doc["chunk_table"]["checksum"] = checksum_str(self.table_bytes())
        man = json.dumps(doc, ensure_ascii=False).encode("utf-8")
        if pad and len(man) < self.reserved:
            man += b" " * (self.reserved - len(man))
        return man

    def to_bytes(self, *, magic=MAGIC, version=2, manifest=None, manifest_len=None, pad=True,
                 table=None, table_offset=None, truncate=None, extra_tail=b"",
                 flip=()) -> bytes:
        """Knobs: manifest (bytes) / manifest_len replace the header's view;
        table (bytes) replaces the table written at table_offset (default:
        doc's offset); flip: [(file offset, xor mask)] applied last."""
        man = self.manifest_bytes(pad) if manifest is None else manifest
        n = len(man) if manifest_len is None else manifest_len
        tb = self.table_bytes() if table is None else table
        toff = self.table_offset if table_offset is None else table_offset
        end = max([HEADER_V2 + len(man), toff + len(tb)] +
                  [p + len(d) for p, d in self.blobs])
        out = bytearray(end)
        for p, d in self.blobs:
            out[p:p + len(d)] = d
        out[toff:toff + len(tb)] = tb
        head = magic + struct.pack("<II", version, n) + man
        out[0:len(head)] = head
        out += extra_tail
        for at, mask in flip:
            out[at] ^= mask
        if truncate is not None:
            del out[truncate:]
        return bytes(out)


def write_v2(path, models, compression="none", block_size=65536, **knobs):
    """Write a v2 bundle of models [(name, bytes)] to path. knobs: those of
    V2Bundle() (level, force_raw, force_zstd, data_start, slack) and of
    V2Bundle.to_bytes(); returns the V2Bundle (its layout is what tests
    need to aim at a block)."""
    init = {k: knobs.pop(k) for k in ("level", "force_raw", "force_zstd", "data_start", "slack")
            if k in knobs}
    b = V2Bundle(models, compression, block_size, **init)
    b.write(path, **knobs)
    return b
