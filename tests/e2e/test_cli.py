"""`apbundle` create / list / verify / extract / stats."""

import hashlib
import os

import pytest

import apbformat
from conftest import MiB, mount, pack, run_apbundle, write_sources

TREE = {
    "config.json": b'{"hidden_size": 768}\n',
    "weights/part1.bin": apbformat.random_bytes(MiB + 5, 31),
    "weights/part2.bin": b"",
    "weights/deeper/part3.bin": apbformat.random_bytes(4096, 32),
    "tokenizer/vocab.txt": b"a\nb\nc\n" * 1000,
}
EXTRA = apbformat.random_bytes(70001, 33)
RENAMED = apbformat.random_bytes(123, 34)


@pytest.fixture
def sources(tmp_path):
    src = tmp_path / "model"
    write_sources(src, TREE)
    (tmp_path / "extra.bin").write_bytes(EXTRA)
    (tmp_path / "r.bin").write_bytes(RENAMED)
    return tmp_path


def expected_models():
    m = dict(TREE)
    m["extra.bin"] = EXTRA
    m["other/renamed.bin"] = RENAMED
    return m


def create_all(src, out, fmt=1):
    return pack(out, src / "model", src / "extra.bin", "other/renamed.bin=%s" % (src / "r.bin"),
                fmt=fmt)


def test_create_v1_layout_matches_spec(sources, binaries):
    out = create_all(sources, sources / "o.apbundle")
    magic, version, n, doc = apbformat.read_v1_manifest(out)
    assert magic == b"APBUNDLE" and version == 1
    raw = out.read_bytes()
    assert raw[16:17] == b"{"
    exp = expected_models()
    assert doc["model_count"] == len(doc["models"]) == len(exp)
    names = [e["name"] for e in doc["models"]]
    assert set(names) == set(exp), "DIR input must be named relative to DIR"
    end_of_manifest = 16 + n
    spans = []
    for e in doc["models"]:
        data = exp[e["name"]]
        assert e["offset"] % 4096 == 0, e
        assert e["offset"] >= end_of_manifest, e
        assert e["size"] == len(data), e
        assert raw[e["offset"]:e["offset"] + e["size"]] == data, e["name"]
        assert e["checksum"] == apbformat.checksum_str(data), e["name"]
        spans.append((e["offset"], e["offset"] + e["size"]))
    spans.sort()
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        assert a1 <= b0 or a0 == a1, "models overlap"
    # gaps are zero bytes
    covered = bytearray(len(raw))
    covered[:end_of_manifest] = b"\x01" * end_of_manifest
    for a0, a1 in spans:
        covered[a0:a1] = b"\x01" * (a1 - a0)
    assert all(raw[i] == 0 for i in range(len(raw)) if not covered[i])


@pytest.mark.parametrize("fmt", [None, 1], ids=["default", "format1"])
def test_round_trip_list_verify_extract(sources, binaries, fmt):
    out = create_all(sources, sources / "o.apbundle", fmt=fmt)
    lst = run_apbundle("list", out, check=True).stdout
    for name, data in expected_models().items():
        line = next((l for l in lst.splitlines() if l.split() and l.split()[0] == name), None)
        assert line, "%s missing from list:\n%s" % (name, lst)
        assert str(len(data)) in line.split(), line
        assert apbformat.checksum_str(data) in line, line
    v = run_apbundle("verify", out)
    assert v.returncode == 0, v.stdout + v.stderr
    for name, data in expected_models().items():
        dst = sources / "x" / (name.replace("/", "_") + ".out")
        dst.parent.mkdir(exist_ok=True)
        run_apbundle("extract", out, name, "-o", dst, check=True)
        assert dst.read_bytes() == data, name


@pytest.mark.parametrize("fmt", [None, 1], ids=["default", "format1"])
def test_create_is_deterministic(sources, binaries, fmt):
    a = create_all(sources, sources / "a.apbundle", fmt=fmt)
    os.utime(sources / "extra.bin", (1, 1))          # input mtimes must not leak in
    b = create_all(sources, sources / "b.apbundle", fmt=fmt)
    assert hashlib.sha256(a.read_bytes()).hexdigest() == hashlib.sha256(b.read_bytes()).hexdigest()


def test_verify_detects_flipped_byte(sources, binaries):
    out = create_all(sources, sources / "o.apbundle")
    _, _, _, doc = apbformat.read_v1_manifest(out)
    victim = next(e for e in doc["models"] if e["name"] == "weights/part1.bin")
    raw = bytearray(out.read_bytes())
    pos = victim["offset"] + victim["size"] // 2
    raw[pos] ^= 0x40
    out.write_bytes(bytes(raw))
    v = run_apbundle("verify", out)
    assert v.returncode != 0
    text = v.stdout + v.stderr
    assert "weights/part1.bin" in text, text
    bad_lines = [l for l in text.splitlines() if "config.json" in l and
                 any(w in l.lower() for w in ("mismatch", "fail", "bad", "corrupt"))]
    assert not bad_lines, "an intact model was reported bad:\n" + text


def test_dir_input_keeps_relative_paths(tmp_path, binaries):
    src = tmp_path / "hf" / "bert-base"
    write_sources(src, {"config.json": b"{}", "onnx/model.onnx": b"x" * 5000,
                        "a/b/c/d.bin": b"d"})
    out = pack(tmp_path / "o.apbundle", src, fmt=1)
    _, _, _, doc = apbformat.read_v1_manifest(out)
    assert sorted(e["name"] for e in doc["models"]) == ["a/b/c/d.bin", "config.json",
                                                        "onnx/model.onnx"]


def _no_leftovers(directory, keep):
    left = sorted(p.name for p in directory.iterdir() if p.name not in keep)
    assert left == [], "create left files behind: %s" % left


def test_create_missing_input_fails_atomically(tmp_path, binaries):
    (tmp_path / "ok.bin").write_bytes(b"ok")
    out = tmp_path / "out" / "o.apbundle"
    out.parent.mkdir()
    p = run_apbundle("create", out, tmp_path / "ok.bin", tmp_path / "missing.bin")
    assert p.returncode != 0
    assert "missing.bin" in p.stderr, p.stderr
    assert not out.exists()
    _no_leftovers(out.parent, set())


def test_create_failure_keeps_previous_output(tmp_path, binaries):
    (tmp_path / "ok.bin").write_bytes(b"ok")
    out = tmp_path / "o.apbundle"
    pack(out, tmp_path / "ok.bin")
    before = out.read_bytes()
    p = run_apbundle("create", out, tmp_path / "ok.bin", tmp_path / "missing.bin")
    assert p.returncode != 0
    assert out.read_bytes() == before
    _no_leftovers(tmp_path, {"ok.bin", "o.apbundle"})


@pytest.mark.parametrize("inputs,what", [
    ([".stats={f}"], ".stats"),
    (["a/../b={f}"], ".."),
    (["/abs={f}"], "/abs"),
    (["x={f}", "x={f}"], "x"),
    (["a={f}", "a/b={f}"], "a/b"),
    (["..={f}"], "component '..' is not allowed"),
    (["../escape={f}"], "component '..' is not allowed"),
    (["x/./y={f}"], "component '.' is not allowed"),
    (["x//y={f}"], "empty component"),
    ([".control={f}"], "'.control' is reserved at the root"),
    ([".metrics/x={f}"], "'.metrics' is reserved at the root"),
])
def test_create_refuses_bad_names(tmp_path, binaries, inputs, what):
    f = tmp_path / "f.bin"
    f.write_bytes(b"data")
    out = tmp_path / "o.apbundle"
    p = run_apbundle("create", out, *[i.format(f=f) for i in inputs])
    assert p.returncode != 0
    assert what in p.stderr, p.stderr
    assert not out.exists()
    _no_leftovers(tmp_path, {"f.bin"})


def test_extract_unknown_name_fails(sources, binaries):
    out = create_all(sources, sources / "o.apbundle")
    p = run_apbundle("extract", out, "nope.bin", "-o", sources / "n.out")
    assert p.returncode != 0
    assert "nope.bin" in p.stderr
    assert not (sources / "n.out").exists()


def test_format_2_or_unknown_format_is_reported(sources, binaries):
    p = run_apbundle("create", "--format", "7", sources / "o.apbundle", sources / "extra.bin")
    assert p.returncode != 0
    assert "7" in p.stderr
    assert not (sources / "o.apbundle").exists()


def test_stats_command_on_mount(sources, binaries):
    out = create_all(sources, sources / "o.apbundle")
    with mount(out, {"max_memory": "1M", "chunk_size": "64K"}) as d:
        with open(d.path("extra.bin"), "rb") as f:
            assert f.read() == EXTRA
        p = run_apbundle("stats", d.mnt)
        assert p.returncode == 0, p.stderr
        assert "extra.bin" in p.stdout
        assert "auto" in p.stdout


def test_stats_command_on_non_mount(tmp_path, binaries):
    p = run_apbundle("stats", tmp_path)
    assert p.returncode != 0
    assert str(tmp_path) in p.stderr


@pytest.mark.parametrize("cmd", ["create", "list", "verify", "extract", "stats"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_subcommand_help_is_usage_on_stdout(cmd, flag):
    p = run_apbundle(cmd, flag)
    assert (p.returncode, p.stderr) == (0, "")
    assert p.stdout.startswith("Usage: apbundle %s " % cmd), p.stdout
