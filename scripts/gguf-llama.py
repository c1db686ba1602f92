#!/usr/bin/python3
"""Write a llama-architecture GGUF (version 3) with random weights, for
running llama.cpp on this project's mounts without downloading a model.

    /usr/bin/python3 scripts/gguf-llama.py OUT.gguf                 # 16 layers, ~392 MiB
    /usr/bin/python3 scripts/gguf-llama.py --layers 4 --embd 512 --ff 1408 OUT.gguf
    /usr/bin/python3 scripts/gguf-llama.py --f32 ...                # f32 weights

The bytes depend only on the options (--seed included): weights are drawn
from numpy's PCG64 with that seed. Matrices are f16 (f32 with --f32),
norms f32. The vocabulary is SentencePiece-style ("llama"): <unk> <s> </s>,
the 256 byte tokens <0x00>..<0xFF>, then some plain tokens. Dimensions of a
tensor are listed innermost first, as GGUF stores them.
"""
import argparse
import struct

import numpy as np

ALIGN = 32
# GGUF metadata value types
U32, I32, F32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9
# ggml tensor types
GGML_F32, GGML_F16 = 0, 1

WORDS = ("the of and to in is was for on that with as by at from it an be this "
         "are or his which her had have not but were one all they their she "
         "model file memory cache read chunk page disk bundle mount token").split()


def s(text):
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, value):
    """One metadata pair: key, type, value; ARRAY values are (type, list)."""
    out = s(key) + struct.pack("<I", vtype)
    if vtype == ARRAY:
        etype, items = value
        out += struct.pack("<IQ", etype, len(items))
        return out + b"".join(scalar(etype, v) for v in items)
    return out + scalar(vtype, value)


def scalar(vtype, v):
    if vtype == STRING:
        return s(v)
    return struct.pack({U32: "<I", I32: "<i", F32: "<f", BOOL: "<?"}[vtype], v)


def vocabulary():
    """(tokens, scores, types): control 3, unknown 2, byte 6, normal 1."""
    tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % i for i in range(256)]
    types = [2, 3, 3] + [6] * 256
    plain = ["\u2581"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    plain += ["\u2581" + w for w in WORDS]
    tokens += plain
    types += [1] * len(plain)
    # longer pieces score higher, so that SPM merges prefer whole words
    scores = [0.0] * 259 + [-100.0 + len(p) for p in plain]
    return tokens, scores, types


def tensors(a):
    """(name, dims innermost first, ggml type) of every tensor, in file order."""
    mat = GGML_F32 if a.f32 else GGML_F16
    e, ff, vocab = a.embd, a.ff, len(vocabulary()[0])
    kv_dim = e // a.heads * a.kv_heads
    out = [("token_embd.weight", (e, vocab), mat)]
    for i in range(a.layers):
        p = "blk.%d." % i
        out += [(p + "attn_norm.weight", (e,), GGML_F32),
                (p + "attn_q.weight", (e, e), mat),
                (p + "attn_k.weight", (e, kv_dim), mat),
                (p + "attn_v.weight", (e, kv_dim), mat),
                (p + "attn_output.weight", (e, e), mat),
                (p + "ffn_norm.weight", (e,), GGML_F32),
                (p + "ffn_gate.weight", (e, ff), mat),
                (p + "ffn_up.weight", (e, ff), mat),
                (p + "ffn_down.weight", (ff, e), mat)]
    out += [("output_norm.weight", (e,), GGML_F32),
            ("output.weight", (e, vocab), mat)]
    return out


def metadata(a):
    tokens, scores, types = vocabulary()
    head_dim = a.embd // a.heads
    return [
        kv("general.architecture", STRING, "llama"),
        kv("general.name", STRING, "apbundlefs random llama"),
        kv("general.alignment", U32, ALIGN),
        kv("llama.vocab_size", U32, len(tokens)),
        kv("llama.context_length", U32, a.ctx),
        kv("llama.embedding_length", U32, a.embd),
        kv("llama.block_count", U32, a.layers),
        kv("llama.feed_forward_length", U32, a.ff),
        kv("llama.attention.head_count", U32, a.heads),
        kv("llama.attention.head_count_kv", U32, a.kv_heads),
        kv("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        kv("llama.rope.dimension_count", U32, head_dim),
        kv("llama.rope.freq_base", F32, 10000.0),
        kv("tokenizer.ggml.model", STRING, "llama"),
        kv("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
        kv("tokenizer.ggml.scores", ARRAY, (F32, scores)),
        kv("tokenizer.ggml.token_type", ARRAY, (I32, types)),
        kv("tokenizer.ggml.unknown_token_id", U32, 0),
        kv("tokenizer.ggml.bos_token_id", U32, 1),
        kv("tokenizer.ggml.eos_token_id", U32, 2),
        kv("tokenizer.ggml.add_bos_token", BOOL, True),
        kv("tokenizer.ggml.add_eos_token", BOOL, False),
    ]


def pad(n):
    return -n % ALIGN


def write(a):
    specs = tensors(a)
    meta = metadata(a)
    infos, offset, sizes = [], 0, []
    for name, dims, ttype in specs:
        size = int(np.prod(dims)) * (4 if ttype == GGML_F32 else 2)
        infos.append(s(name) + struct.pack("<I", len(dims))
                     + struct.pack("<%dQ" % len(dims), *dims)
                     + struct.pack("<IQ", ttype, offset))
        sizes.append(size)
        offset += size + pad(size)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(specs), len(meta))
    head += b"".join(meta) + b"".join(infos)
    head += b"\0" * pad(len(head))
    rng = np.random.default_rng(a.seed)
    with open(a.out, "wb") as f:
        f.write(head)
        for (name, dims, ttype), size in zip(specs, sizes):
            n = int(np.prod(dims))
            if name.endswith("norm.weight"):
                data = np.ones(n, np.float32)
            else:
                # std 1/sqrt(fan-in) keeps activations of every layer of order 1
                std = 1.0 / np.sqrt(dims[0])
                data = rng.standard_normal(n, np.float32) * np.float32(std)
                data = data.astype(np.float16 if ttype == GGML_F16 else np.float32)
            f.write(data.tobytes())
            f.write(b"\0" * pad(size))
        total = f.tell()
    print("%s: %d layers, n_embd %d, n_ff %d, %s, %d bytes (%.1f MiB)"
          % (a.out, a.layers, a.embd, a.ff, "f32" if a.f32 else "f16", total, total / 2**20))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--embd", type=int, default=1024, help="n_embd")
    p.add_argument("--ff", type=int, default=2816, help="n_ff (feed-forward length)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--ctx", type=int, default=2048, help="context_length")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--f32", action="store_true", help="f32 matrices (AMX does not repack them)")
    a = p.parse_args()
    if a.embd % a.heads or a.heads % a.kv_heads:
        p.error("--embd must be a multiple of --heads, --heads of --kv-heads")
    write(a)


if __name__ == "__main__":
    main()
