#!/usr/bin/python3
"""Regenerate the seed corpus of fuzz_bundle in tests/fuzz/corpus/.

Small bundles of every layout, valid and a few broken ones, built with the
test suite's byte-level writers (tests/e2e/apbformat.py). Models are a few
hundred bytes so that inputs stay under the fuzzer's -max_len. Inputs that
the fuzzer found (regress-*) are kept in the same directory by hand; this
script only rewrites the seed-* files.

    /usr/bin/python3 tests/fuzz/make_corpus.py
"""

import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))

import apbformat  # noqa: E402
from apbformat import V1Bundle, V2Bundle, aprender_bytes  # noqa: E402

A = apbformat.random_bytes(300, 1)
B = b"0123456789abcdef" * 40          # compressible
EMPTY = b""


def seeds():
    # version 1, JSON manifest; slack=0 keeps the data at offset 4096
    yield "v1-one", V1Bundle([("a.bin", A)], slack=0).to_bytes()
    yield "v1-two-dirs", V1Bundle([("d/a.bin", A), ("d/e/b", B), ("z", EMPTY)],
                                  slack=0).to_bytes()
    yield "v1-empty-only", V1Bundle([("e", EMPTY)], slack=0).to_bytes()
    yield "v1-no-models", V1Bundle([], slack=0).to_bytes()
    b = V1Bundle([("a.bin", A), ("b.bin", B)], slack=0)
    b.doc["unknown"] = {"nested": [1, 2.5, None, True, "s"]}
    yield "v1-unknown-keys", b.to_bytes()
    # aprender's binary layout
    yield "apr-two", aprender_bytes([("enc.bin", A), ("dec.bin", B)])
    yield "apr-empty-desc", aprender_bytes([("m", B), ("n/o", EMPTY)], description=b"")
    # version 2: blocks, an XXH3 per block, zstd; 4096-byte blocks so that
    # small models still have several
    R = apbformat.random_bytes(10000, 3)
    Z = apbformat.compressible_bytes(9000, 4)
    yield "v2-none", V2Bundle([("a.bin", R), ("e", EMPTY)], block_size=4096,
                              slack=0).to_bytes()
    yield "v2-zstd", V2Bundle([("b.bin", Z), ("c.bin", A)], compression="zstd",
                              block_size=4096, slack=0).to_bytes()
    mixed = V2Bundle([("d/a.bin", R, {"compression": "none"}),
                      ("d/z.bin", Z + R[:3000], {"compression": "zstd"}),
                      ("e", EMPTY, {"compression": "zstd"})],
                     block_size=8192, slack=0, force_raw={("d/z.bin", 1)})
    yield "v2-mixed", mixed.to_bytes()
    # the writer's spelling: each model key with a default left out
    compact = V2Bundle(mixed.models, block_size=8192, slack=0,
                       force_raw={("d/z.bin", 1)})
    compact.doc.update(compression="zstd", chunk_size=8192)
    for e in compact.entries:
        del e["chunk_size"], e["first_chunk"], e["stored_size"]
        if e["size"]:
            del e["offset"]
        if e["compression"] == "zstd":
            del e["compression"]
    yield "v2-defaults", compact.to_bytes()
    # broken on purpose: the paths that refuse
    good = V1Bundle([("a.bin", A), ("b.bin", B)], slack=0)
    yield "bad-v1-overlap", _overlap(good)
    yield "bad-v1-truncated", good.to_bytes()[:-7]
    yield "bad-v1-names", V1Bundle([("a", A), ("a/b", B)], slack=0).to_bytes()
    yield "bad-v1-version9", good.to_bytes(version=9)
    data = aprender_bytes([("enc.bin", A)])
    count_at = 20 + 4 + 8 + 4 + len(b"written by tests")   # after the description
    yield "bad-apr-count", data[:count_at] + struct.pack("<I", 0xffffffff) + data[count_at + 4:]
    yield "bad-header-only", apbformat.MAGIC + struct.pack("<II", 1, 0)
    def zstd_one():
        return V2Bundle([("b.bin", Z)], compression="zstd", block_size=4096, slack=0)
    b = zstd_one()
    yield "bad-v2-table-sum", b.to_bytes(flip=[(b.table_offset + 3, 1)])
    b = zstd_one()
    b.blocks[1]["flags"] = 2
    yield "bad-v2-flags", b.to_bytes()
    b = zstd_one()
    b.blocks[0]["xxh3"] ^= 1
    yield "bad-v2-block-sum", b.to_bytes()       # opens; its reads fail


def _overlap(good):
    b = V1Bundle(good.models, slack=0)
    b.entries[1]["offset"] = b.entries[0]["offset"]
    return b.to_bytes()


def main():
    out = os.path.join(HERE, "corpus")
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        if f.startswith("seed-"):
            os.unlink(os.path.join(out, f))
    for name, data in seeds():
        with open(os.path.join(out, "seed-" + name), "wb") as f:
            f.write(data)
    print("wrote %d seeds to %s" % (len(list(seeds())), out))


if __name__ == "__main__":
    main()
