"""Every validation rule of docs/FORMAT.md refuses the bundle at mount time.

Each case crafts one bad bundle byte by byte and expects: the daemon exits
with status 1, its stderr starts with `apbundlefs: <bundle path>: ` and
contains a substring that identifies the rule (taken from the reader's
messages in core/bundle.c, core/v2.c, core/name.c, core/aprender.c), and
no mount is left. `apbundle list` and `apbundle verify` must refuse the same files.
"""

import json
import struct

import pytest

import apbformat
from apbformat import MAGIC, V1Bundle, aprender_bytes
from conftest import fuse_mounts, run_apbundle, run_daemon_expect_failure, _under

A = apbformat.random_bytes(5000, 1)
B = apbformat.random_bytes(9000, 2)
TWO = [("a.bin", A), ("b.bin", B)]
ONE = [("a.bin", A)]


def v1(models=TWO, mutate=None, **kw):
    b = V1Bundle(models)
    if mutate:
        mutate(b.doc)
    return b.to_bytes(**kw)


def v1_raw(manifest: bytes, models=TWO):
    return V1Bundle(models).to_bytes(manifest=manifest)


def named(name, models=None):
    """A bundle whose first model is called name."""
    ms = [(name, A)] + list(models or [("zz.bin", B)])
    return V1Bundle(ms).to_bytes()


def setm(i, key, value):
    def f(doc):
        doc["models"][i][key] = value
    return f


def delm(i, key):
    def f(doc):
        del doc["models"][i][key]
    return f


def settop(key, value):
    def f(doc):
        if value is DELETE:
            del doc[key]
        else:
            doc[key] = value
    return f


DELETE = object()


def big_manifest_offset_4096():
    b = V1Bundle(ONE, data_start=3 * 4096)
    b.doc["padding"] = "x" * 6000          # manifest now covers [16, ~6100)
    b.entries[0]["offset"] = 4096
    return b.to_bytes()


def overlapping():
    b = V1Bundle(TWO)
    b.entries[1]["offset"] = b.entries[0]["offset"]
    b.entries[1]["checksum"] = b.entries[0]["checksum"]
    return b.to_bytes()


def overlapping_partial():
    b = V1Bundle([("a.bin", apbformat.random_bytes(3 * 4096, 3)), ("b.bin", B)])
    b.entries[1]["offset"] = b.entries[0]["offset"] + 4096
    return b.to_bytes()


def past_eof():
    b = V1Bundle(TWO)
    b.entries[1]["size"] += 1
    return b.to_bytes()


def truncated_by_one():
    return V1Bundle(TWO).to_bytes()[:-1]


def near_2_53():
    b = V1Bundle(ONE)
    b.entries[0]["offset"] = 2**53 - 4096
    b.entries[0]["size"] = 2**53 - 1
    return b.to_bytes()


def duplicate_key():
    b = V1Bundle(ONE)
    e = b.entries[0]
    man = ('{"model_count": 1, "models": [{"name": "a.bin", "offset": %d, "offset": %d, '
           '"size": %d, "checksum": "%s"}]}' % (e["offset"], e["offset"], e["size"], e["checksum"]))
    return b.to_bytes(manifest=man.encode())


def invalid_utf8_name():
    b = V1Bundle(ONE)
    man = b.manifest_bytes().replace(b'"a.bin"', b'"a\xff.bin"')
    return b.to_bytes(manifest=man)


def nul_in_name():
    b = V1Bundle(ONE)
    man = b.manifest_bytes().replace(b'"a.bin"', b'"a\\u0000b.bin"')
    return b.to_bytes(manifest=man)


def manifest_len_past_eof():
    data = v1()
    return data[:12] + struct.pack("<I", len(data)) + data[16:]


def json_syntax_error():
    good = V1Bundle(TWO)
    man = good.manifest_bytes()
    return good.to_bytes(manifest=man[:-1] + b",}")      # {..., } is not JSON


def trailing_garbage():
    good = V1Bundle(TWO)
    return good.to_bytes(manifest=good.manifest_bytes() + b" xyz")


def unsorted_names_ok_but_a_and_a_slash_b():
    return V1Bundle([("a", A), ("a/b", B)]).to_bytes()


def apr(models=None, **kw):
    return aprender_bytes(models or [("enc.bin", A), ("dec.bin", B)], **kw)


def apr_truncated_manifest():
    data = apr()
    man_len = struct.unpack("<Q", data[12:20])[0]
    return data[:20 + man_len // 2]


def apr_manifest_entries_cut():
    # the manifest length claims fewer bytes than the entries need
    data = apr()
    man_len = struct.unpack("<Q", data[12:20])[0]
    return data[:12] + struct.pack("<Q", man_len - 12) + data[20:]


def apr_model_past_eof():
    return apr(sizes=[len(A), len(B) + 1])


def apr_offset_overflow():
    return apr(offsets=[0, 2**64 - 5])


def apr_size_overflow():
    return apr(offsets=[0, 2**63], sizes=[len(A), 2**63 + 5])


def apr_trailing_manifest_bytes():
    data = apr()
    man_len = struct.unpack("<Q", data[12:20])[0]
    # grow the manifest by 4 bytes (taken from the data, so data shifts)
    return data[:12] + struct.pack("<Q", man_len + 4) + data[20:]


def too_many_json_values():
    # valid JSON whose cJSON tree would be ~80 bytes per 2 manifest bytes
    n = 16 * 2**20
    man = b'{"model_count": 0, "models": [], "x": [' + b"0," * n + b"0]}"
    return MAGIC + struct.pack("<II", 1, len(man)) + man


CASES = [
    # id, bytes (or a callable), expected substring
    ("empty file", b"", "file is 0 bytes, shorter than the 16-byte header"),
    ("short file", MAGIC + b"\x01\x00", "file is 10 bytes, shorter than the 16-byte header"),
    ("bad magic", b"APBUNDLX" + v1()[8:], "not an apbundle file (bad magic)"),
    ("lower-case magic", b"apbundle" + v1()[8:], "bad magic"),
    ("version 7", lambda: v1(version=7), "unsupported format version 7"),
    ("version 0", lambda: v1(version=0), "unsupported format version 0"),
    ("manifest length past EOF", manifest_len_past_eof, "runs past end of file"),
    ("manifest length 0", MAGIC + struct.pack("<II", 1, 0) + b"{}", "manifest length is 0"),
    ("manifest length 0, nothing after", MAGIC + struct.pack("<II", 1, 0), "manifest length is 0"),
    ("JSON syntax error", json_syntax_error, "manifest is not valid JSON"),
    ("JSON cut short", lambda: v1_raw(b'{"model_count": 1, "models": ['), "manifest is not valid JSON"),
    ("bytes after the JSON value", trailing_garbage, "unexpected bytes after the JSON value"),
    # a manifest must begin with '{' (else, with bytes 16..19 zero, it is aprender's layout)
    ("top level not an object", lambda: v1_raw(b"[1, 2, 3]"), "manifest must begin with '{'"),
    ("top level a string", lambda: v1_raw(b'"model_count"'), "manifest must begin with '{'"),
    ("model_count mismatch", lambda: v1(mutate=settop("model_count", 3)),
     "'model_count' is 3 but 'models' has 2 entries"),
    ("model_count missing", lambda: v1(mutate=settop("model_count", DELETE)), "'model_count' is missing"),
    ("model_count a string", lambda: v1(mutate=settop("model_count", "2")), "'model_count' is not a number"),
    ("model_count above limit", lambda: v1(mutate=settop("model_count", 2**20 + 1)), "exceeds the limit"),
    ("models missing", lambda: v1(mutate=settop("models", DELETE)), "'models' is missing"),
    ("models not an array", lambda: v1(mutate=settop("models", {"a.bin": 1})), "'models' is not an array"),
    ("model entry not an object", lambda: v1(mutate=lambda d: d["models"].__setitem__(0, "a.bin")),
     "models[0] is not a JSON object"),
    ("name missing", lambda: v1(mutate=delm(0, "name")), "models[0]: 'name' is missing"),
    ("name not a string", lambda: v1(mutate=setm(1, "name", 7)), "models[1]: 'name' is not a string"),
    ("offset missing", lambda: v1(mutate=delm(0, "offset")), "model 'a.bin': 'offset' is missing"),
    ("size missing", lambda: v1(mutate=delm(1, "size")), "model 'b.bin': 'size' is missing"),
    ("checksum missing", lambda: v1(mutate=delm(0, "checksum")), "model 'a.bin': 'checksum' is missing"),
    ("negative offset", lambda: v1(mutate=setm(0, "offset", -4096)), "'offset' -4096 is negative"),
    ("negative size", lambda: v1(mutate=setm(0, "size", -1)), "'size' -1 is negative"),
    ("non-integer offset", lambda: v1(mutate=setm(0, "offset", 4096.5)), "'offset' 4096.5 is not an exact integer"),
    ("non-integer size", lambda: v1(mutate=setm(0, "size", 10.25)), "'size' 10.25 is not an exact integer"),
    ("offset a string", lambda: v1(mutate=setm(0, "offset", "4096")), "'offset' is not a number"),
    ("offset not a multiple of 4096", lambda: v1(mutate=setm(0, "offset", 4096 + 512)),
     "offset 4608 is not a multiple of 4096"),
    ("offset 0 inside header", lambda: v1(mutate=setm(0, "offset", 0)),
     "offset 0 is inside the header and manifest"),
    ("offset inside manifest", big_manifest_offset_4096, "offset 4096 is inside the header and manifest"),
    ("offset+size past EOF", past_eof, "runs past end of file"),
    ("file truncated by one byte", truncated_by_one, "runs past end of file"),
    ("offset at 2^53", lambda: v1(mutate=setm(0, "offset", 2**53)), "above 2^53-1"),
    ("offset 2^64-4096", lambda: v1(mutate=setm(0, "offset", 2**64 - 4096)), "above 2^53-1"),
    ("offset+size near 2^53", near_2_53, "runs past end of file"),
    ("overlapping models (same offset)", overlapping, "overlap"),
    ("overlapping models (partial)", overlapping_partial, "overlap"),
    ("duplicate names", lambda: V1Bundle([("a.bin", A), ("a.bin", B)]).to_bytes(), "duplicate name 'a.bin'"),
    ("duplicate key", duplicate_key, "key 'offset' appears twice"),
    ("too many JSON values", too_many_json_values, "manifest has more than 16777216 JSON values"),
    ("name with ..", lambda: named("x/../a.bin"), "component '..' is not allowed"),
    ("name ..", lambda: named(".."), "component '..' is not allowed"),
    ("name with . component", lambda: named("x/./a.bin"), "component '.' is not allowed"),
    ("leading slash", lambda: named("/a.bin"), "must be relative"),
    ("trailing slash", lambda: named("x/"), "ends with '/'"),
    ("empty component", lambda: named("x//a.bin"), "empty component"),
    ("empty name", lambda: named(""), "name is empty"),
    ("control character", lambda: named("a\x01b"), "control character 0x01"),
    ("newline", lambda: named("a\nb"), "control character 0x0a"),
    ("DEL character", lambda: named("a\x7fb"), "control character 0x7f"),
    ("NUL in name", nul_in_name, "NUL"),
    ("invalid UTF-8", invalid_utf8_name, "invalid UTF-8"),
    ("reserved .stats", lambda: named(".stats"), "'.stats' is reserved at the root"),
    ("reserved .metrics", lambda: named(".metrics"), "'.metrics' is reserved at the root"),
    ("reserved .control", lambda: named(".control"), "'.control' is reserved at the root"),
    ("reserved as directory", lambda: named(".stats/x"), "'.stats' is reserved at the root"),
    ("file/dir collision a and a/b", unsorted_names_ok_but_a_and_a_slash_b, "is both a file and a directory"),
    ("file/dir collision with a-x between", lambda: V1Bundle([("d", A), ("d-x", B), ("d/y", A)]).to_bytes(),
     "is both a file and a directory"),
    ("component > 255 bytes", lambda: named("d/" + "x" * 256), "more than the limit of 255"),
    ("name > 4096 bytes", lambda: named("/".join(["y" * 200] * 21)), "more than the limit of 4096"),
    ("checksum wrong prefix", lambda: v1(mutate=setm(0, "checksum", "md5:0123456789abcdef")),
     "followed by 16 lower-case hex digits"),
    ("checksum too short", lambda: v1(mutate=setm(0, "checksum", "xxh3-64:0123")),
     "followed by 16 lower-case hex digits"),
    ("checksum upper case", lambda: v1(mutate=setm(0, "checksum", "xxh3-64:0123456789ABCDEF")),
     "followed by 16 lower-case hex digits"),
    ("checksum not hex", lambda: v1(mutate=setm(0, "checksum", "xxh3-64:0123456789abcdeg")),
     "followed by 16 lower-case hex digits"),
    ("checksum not a string", lambda: v1(mutate=setm(0, "checksum", 12345)), "'checksum' is not a string"),
    # the aprender layout
    ("aprender truncated manifest", apr_truncated_manifest, "runs past end of file"),
    ("aprender manifest ends early", apr_manifest_entries_cut, "aprender manifest ends early"),
    ("aprender trailing manifest bytes", apr_trailing_manifest_bytes, "trailing bytes after the last model entry"),
    ("aprender model past EOF", apr_model_past_eof, "runs past end of file"),
    ("aprender offset overflow", apr_offset_overflow, "overflows"),
    ("aprender offset+size overflow", apr_size_overflow, "overflows"),
    ("aprender bad name", lambda: apr([("../x", A)]), "component '..' is not allowed"),
    ("aprender reserved name", lambda: apr([(".control", A)]), "'.control' is reserved at the root"),
    ("aprender duplicate names", lambda: apr([("m", A), ("m", B)]), "duplicate name 'm'"),
    ("aprender manifest length 2^31", lambda: apr(manifest_len=2**31), "exceeds the limit"),
    ("aprender manifest length 2^40", lambda: apr(manifest_len=2**40), "manifest must begin with '{'"),
    ("aprender manifest length 0", lambda: apr(manifest_len=0), "manifest length is 0"),
    ("aprender short header", MAGIC + struct.pack("<I", 1) + b"\x05\x00\x00\x00\x00\x00", "20-byte header"),
    ("aprender model count cannot fit", MAGIC + struct.pack("<IQ", 1, 20) +
     struct.pack("<IQII", 1, 0, 0, 1000), "cannot fit"),
]


# ---- version 2 (docs/FORMAT.md): models in blocks, the block table -------

R1 = apbformat.random_bytes(10000, 11)             # 3 blocks of 4096, random
Z1 = apbformat.compressible_bytes(9000, 12)         # 3 blocks, zstd shrinks them


def v2b():
    """A valid v2 bundle: a.bin 'none', b.bin 'zstd' (frames), c.bin 'zstd'
    with random bytes (every block stored raw), all at 4096-byte blocks."""
    return apbformat.V2Bundle([
        ("a.bin", R1, {"compression": "none"}),
        ("b.bin", Z1, {"compression": "zstd"}),
        ("c.bin", apbformat.random_bytes(5000, 13), {"compression": "zstd"}),
    ], block_size=4096)


def v2(mutate=None, **kw):
    b = v2b()
    if mutate:
        mutate(b)
    return b.to_bytes(**kw)


def v2_doc(mutate):
    """The valid bundle with its final manifest document edited as JSON."""
    b = v2b()
    doc = json.loads(b.manifest_bytes())
    mutate(doc)
    return b.to_bytes(manifest=json.dumps(doc).encode())


def v2m(name, key, value):
    def f(b):
        e = b.model(name)
        if value is DELETE:
            del e[key]
        else:
            e[key] = value
    return f


def v2t(key, value):
    def f(b):
        if value is DELETE:
            del b.doc["chunk_table"][key]
        else:
            b.doc["chunk_table"][key] = value
    return f


def v2c(name, k, key, value):
    """Set a key of block k of model name (the table checksum follows)."""
    def f(b):
        b.entry(name, k)[key] = value(b.entry(name, k)) if callable(value) else value
    return f


def v2_table_misaligned():
    b = v2b()
    b.doc["chunk_table"]["offset"] = b.table_offset + 4
    return b.to_bytes(table_offset=b.table_offset + 4)


def v2_table_flipped():
    b = v2b()
    return b.to_bytes(flip=[(b.table_offset + 5, 0x40)])


def v2_table_over_model():
    b = v2b()
    at = b.model("b.bin")["offset"]
    at = apbformat.align_up(at, 8)
    b.doc["chunk_table"]["offset"] = at
    return b.to_bytes(table_offset=at)


def v2_unused_entry():
    b = v2b()
    b.blocks.append(dict(b.blocks[-1]))
    b.doc["chunk_table"]["count"] = len(b.blocks)
    return b.to_bytes()


def v2_swapped_blocks():
    b = v2b()
    e0, e1 = b.entry("b.bin", 0), b.entry("b.bin", 1)
    e0["offset"], e1["offset"] = e1["offset"], e0["offset"]
    return b.to_bytes()


def v2_none_gap():
    # a.bin alone, its last block one page further on (inside a grown
    # stored_size, the table moved past it): aligned, in order, in range
    b = apbformat.V2Bundle([("a.bin", R1)], block_size=4096)
    e = b.entries[0]
    e["stored_size"] += 4096
    b.blocks[2]["offset"] += 4096
    t = apbformat.align_up(e["offset"] + e["stored_size"], 8)
    b.doc["chunk_table"]["offset"] = t
    return b.to_bytes(table_offset=t)


def v2_padding_not_spaces():
    b = v2b()
    man = b.manifest_bytes()
    assert man.endswith(b" ")
    return b.to_bytes(manifest=man[:-1] + b"x")


def v2_empty_model_stores_bytes():
    b = apbformat.V2Bundle([("a.bin", R1), ("e", b"")], block_size=4096)
    b.entries[1]["stored_size"] = 4096
    b.entries[1]["offset"] = apbformat.align_up(b.table_offset + 24 * len(b.blocks))
    return b.to_bytes(extra_tail=bytes(8192))


V2_CASES = [
    ("v2 version 3", lambda: v2(version=3), "unsupported format version 3"),
    ("v2 chunk_table missing", lambda: v2_doc(lambda d: d.pop("chunk_table")),
     "manifest: 'chunk_table' is missing"),
    ("v2 chunk_table not an object", lambda: v2_doc(lambda d: d.__setitem__("chunk_table", [1, 2])),
     "'chunk_table' is not a JSON object"),
    ("v2 block count above limit", lambda: v2(v2t("count", 2**24 + 1)),
     "chunk_table: 'count' 16777217 exceeds the limit of 16777216"),
    ("v2 block count past EOF", lambda: v2(v2t("count", 2**24)),
     "chunk_table: 16777216 entries (402653184 bytes at offset"),
    ("v2 table offset not a multiple of 8", v2_table_misaligned,
     "is not a multiple of 8"),
    ("v2 table inside the manifest", lambda: v2(v2t("offset", 16)),
     "chunk_table: offset 16 is inside the header and manifest"),
    ("v2 table cut by truncation", lambda: v2(truncate=-1),
     "chunk_table: 8 entries (192 bytes at offset"),
    ("v2 table checksum mismatch", v2_table_flipped, "chunk_table: checksum mismatch"),
    ("v2 table checksum malformed", lambda: v2(v2t("checksum", "xxh3-64:12")),
     "chunk_table: checksum 'xxh3-64:12' is not"),
    ("v2 table checksum missing", lambda: v2(v2t("checksum", DELETE)),
     "chunk_table: 'checksum' is missing"),
    ("v2 table overlaps a model", v2_table_over_model, "overlaps model 'b.bin'"),
    ("v2 unknown compression", lambda: v2(v2m("a.bin", "compression", "lz4")),
     "model 'a.bin': unknown compression 'lz4'"),
    # A model without "compression" is the top level's, by default none.
    ("v2 compression left out of a zstd model", lambda: v2(v2m("b.bin", "compression", DELETE)),
     "model 'b.bin' block 0 (table entry 3): a zstd frame in a model whose compression is 'none'"),
    ("v2 top-level unknown compression",
     lambda: v2_doc(lambda d: d.__setitem__("compression", "lz4")),
     "manifest: unknown compression 'lz4'"),
    ("v2 top-level chunk_size not a multiple of 4096",
     lambda: v2_doc(lambda d: d.__setitem__("chunk_size", 6000)),
     "manifest: chunk_size 6000 is not a multiple of 4096"),
    ("v2 compression not a string", lambda: v2(v2m("a.bin", "compression", 1)),
     "'compression' is not a string"),
    ("v2 chunk_size not a multiple of 4096", lambda: v2(v2m("a.bin", "chunk_size", 6000)),
     "chunk_size 6000 is not a multiple of 4096"),
    ("v2 chunk_size 0", lambda: v2(v2m("a.bin", "chunk_size", 0)),
     "chunk_size 0 is outside 4096 .. 16777216"),
    ("v2 chunk_size 32 MiB", lambda: v2(v2m("b.bin", "chunk_size", 32 << 20)),
     "chunk_size 33554432 is outside 4096 .. 16777216"),
    # A model without "offset" starts at its first block; one that gives an
    # offset past its blocks and leaves out its stored size is refused.
    ("v2 offset past the model's blocks, stored_size left out",
     lambda: v2(lambda b: (v2m("b.bin", "stored_size", DELETE)(b),
                           v2m("b.bin", "offset", 1 << 40)(b))),
     "model 'b.bin': its last block (table entry"),
    ("v2 empty model stores bytes", v2_empty_model_stores_bytes,
     "size is 0 but stored_size is 4096"),
    ("v2 blocks past the table", lambda: v2(v2m("c.bin", "first_chunk", 7)),
     "run past the block table"),
    ("v2 table entry used by no model", v2_unused_entry, "are used by no model"),
    ("v2 unknown block flags", lambda: v2(v2c("b.bin", 1, "flags", 3)), "unknown flags 0x00000003"),
    ("v2 zstd frame in a 'none' model", lambda: v2(v2c("a.bin", 0, "flags", 1)),
     "a zstd frame in a model whose compression is 'none'"),
    ("v2 raw block misaligned", lambda: v2(v2c("c.bin", 0, "offset", lambda e: e["offset"] + 8)),
     "is not a multiple of 4096"),
    ("v2 raw block short", lambda: v2(v2c("c.bin", 0, "length", 4095)),
     "raw block stores 4095 bytes, not the block's 4096"),
    ("v2 zstd frame of 0 bytes", lambda: v2(v2c("b.bin", 0, "length", 0)),
     "zstd frame of 0 bytes is outside 1 .."),
    ("v2 zstd frame past the bound", lambda: v2(v2c("b.bin", 2, "length", 10**6)),
     "zstd frame of 1000000 bytes is outside 1 .."),
    ("v2 block before its model", lambda: v2(v2c("b.bin", 0, "offset", lambda e: e["offset"] - 8)),
     "is before the model's stored bytes"),
    ("v2 blocks out of order", v2_swapped_blocks, "blocks must be in offset order"),
    ("v2 block past the model's bytes", lambda: v2(v2m("b.bin", "stored_size", 10)),
     "run past the model's stored bytes"),
    ("v2 'none' blocks not back to back",
     v2_none_gap,
     "a 'none' model's blocks lie back to back"),
    ("v2 padding not spaces", v2_padding_not_spaces, "unexpected bytes after the JSON value"),
    ("v2 model_count mismatch", lambda: v2(lambda b: b.doc.__setitem__("model_count", 2)),
     "'model_count' is 2 but 'models' has 3 entries"),
    ("v2 name with ..", lambda: apbformat.V2Bundle([("x/../a", R1)]).to_bytes(),
     "component '..' is not allowed"),
]

CASES += V2_CASES


def _bytes(case):
    data = case[1]
    return data() if callable(data) else data


@pytest.fixture
def bad_bundle(tmp_path, request):
    path = tmp_path / "bad.apbundle"
    path.write_bytes(_bytes(request.param))
    return path, request.param[2]


@pytest.mark.parametrize("bad_bundle", CASES, ids=[c[0] for c in CASES], indirect=True)
def test_daemon_refuses_bundle(bad_bundle, tmp_path, binaries):
    path, expected = bad_bundle
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, log, mounted = run_daemon_expect_failure(path, mnt)
    assert not mounted, "the daemon mounted a malformed bundle"
    assert rc == 1, "exit status %r (expected 1); stderr:\n%s" % (rc, log)
    first = log.splitlines()[0] if log else ""
    prefix = "apbundlefs: %s: " % path
    assert first.startswith(prefix), "stderr does not start with %r:\n%s" % (prefix, log)
    assert expected in first, "expected %r in the message:\n%s" % (expected, log)
    assert not any(_under(m, tmp_path) for m in fuse_mounts())


@pytest.mark.parametrize("bad_bundle", CASES, ids=[c[0] for c in CASES], indirect=True)
def test_packer_refuses_bundle(bad_bundle, binaries):
    path, expected = bad_bundle
    for cmd in ("list", "verify"):
        p = run_apbundle(cmd, path)
        assert p.returncode != 0, "apbundle %s accepted a malformed bundle:\n%s" % (cmd, p.stdout)
        assert str(path) in p.stderr, "apbundle %s: error does not name the file:\n%s" % (cmd, p.stderr)
        assert expected in p.stderr, "apbundle %s: expected %r in:\n%s" % (cmd, expected, p.stderr)


def test_refused_without_foreground(tmp_path, binaries):
    """Daemon mode: the bundle is checked before daemonizing; exit 1, no mount."""
    path = tmp_path / "bad.apbundle"
    path.write_bytes(b"APBUNDLX" + v1()[8:])
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, log, mounted = run_daemon_expect_failure(path, mnt, foreground=False)
    assert not mounted
    assert rc == 1, log
    assert log.startswith("apbundlefs: %s: not an apbundle file" % path), log


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_unusable_path(tmp_path, binaries, what):
    path = tmp_path / "b.apbundle"
    if what == "directory":
        path.mkdir()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, log, mounted = run_daemon_expect_failure(path, mnt)
    assert not mounted and rc == 1, log
    assert log.startswith("apbundlefs: %s: " % path), log
    assert ("No such file or directory" if what == "missing" else "not a regular file") in log


def test_valid_builders_are_valid(tmp_path, binaries):
    """Guard for the crafted cases: the unmodified builders pass `apbundle verify`."""
    for i, data in enumerate([v1(), V1Bundle(ONE).to_bytes(), named("ok/name.bin"), apr(),
                              v2()]):
        p = tmp_path / ("ok%d.apbundle" % i)
        p.write_bytes(data)
        for cmd in ("list", "verify"):
            r = run_apbundle(cmd, p)
            assert r.returncode == 0, (i, cmd, r.stdout, r.stderr)
