"""`apbundle create` in format 2 (and 1): round trips of sizes around block
boundaries through `extract` and a real mount, the bytes on disk checked
against the design (docs/FORMAT.md) without the reader, determinism across
thread counts, a corrupt block named by `verify` and `extract`, usage errors,
and that a failed or interrupted create leaves nothing behind."""

import json
import os
import pty
import signal
import struct
import subprocess

import pytest

import apbformat
from conftest import (APBUNDLE, KiB, MiB, mount, pack, read_terminal, run_apbundle, wait_until,
                      write_sources)

ENTRY = struct.Struct("<QIIQ")      # offset, length, flags, xxh3


def sizes_for(bs):
    return [0, 1, 4095, 4096, 4097, bs - 1, bs, bs + 1, 3 * bs + 5]


def data_for(size, seed):
    """Half text-like (zstd shrinks it), half random (it does not), so a
    compressed model holds both frames and raw blocks."""
    half = size // 2
    text = (b"layer.%d.weight " % seed) * (half // 14 + 1)
    return text[:half] + apbformat.random_bytes(size - half, seed)


def written_manifest(raw):
    """The manifest of format 2 file bytes raw, as written."""
    magic, version, n = struct.unpack_from("<8sII", raw)
    assert (magic, version) == (b"APBUNDLE", 2)
    return json.loads(raw[16:16 + n].decode())     # trailing spaces are valid JSON


def read_v2(path):
    """(manifest with every default spelled out, table entries, file bytes)
    of a format 2 file."""
    raw = path.read_bytes()
    written = written_manifest(raw)
    t = written["chunk_table"]
    table = raw[t["offset"]:t["offset"] + 24 * t["count"]]
    assert apbformat.checksum_str(table) == t["checksum"]
    entries = [ENTRY.unpack_from(table, 24 * i) for i in range(t["count"])]
    doc = apbformat.v2_with_defaults(written, entries, 16 + struct.unpack_from("<I", raw, 12)[0])
    return doc, entries, raw


def check_v2_bytes(path, models, compression, bs):
    """What the writer must have stored for models {name: bytes}: the keys,
    each block's XXH3 of its uncompressed bytes, raw blocks 4096-aligned and
    equal to the source, frames only in zstd models and only when shorter."""
    doc, entries, raw = read_v2(path)
    # Every key with a default is left out: a model spells its name, size
    # and checksum, fewer keys than in version 1.
    written = written_manifest(raw)
    assert set(written) == ({"model_count", "chunk_table", "models"}
                            | ({"compression"} if compression == "zstd" else set())
                            | ({"chunk_size"} if bs != 65536 else set()))
    assert written.get("compression", "none") == compression
    assert written.get("chunk_size", 65536) == bs
    for m in written["models"]:
        assert set(m) == {"name", "size", "checksum"}, m
    assert doc["model_count"] == len(models)
    assert [m["name"] for m in doc["models"]] == sorted(models)
    used = 0
    for m in doc["models"]:
        data = models[m["name"]]
        assert m["size"] == len(data)
        assert m["checksum"] == apbformat.checksum_str(data)
        assert (m["compression"], m["chunk_size"]) == (compression, bs)
        count = -(-len(data) // bs)
        for i, (off, length, flags, xxh) in enumerate(entries[m["first_chunk"]:][:count]):
            block = data[i * bs:(i + 1) * bs]
            assert xxh == apbformat.xxh3_64(block), (m["name"], i)
            assert m["offset"] <= off and off + length <= m["offset"] + m["stored_size"]
            if flags == 0:
                assert off % 4096 == 0 and raw[off:off + length] == block, (m["name"], i)
            else:
                assert flags == 1 and compression == "zstd" and length < len(block)
        if compression == "none":
            assert m["stored_size"] == m["size"]
        used += count
    assert used == len(entries)
    return doc, entries


CONFIGS = [
    # id, create options, block size the sizes are built around
    ("v1", dict(fmt=1), 64 * KiB),
    ("none-4k", dict(block_size=4096), 4096),
    ("zstd-4k", dict(compress="zstd", block_size="4K"), 4096),
    ("none-default", dict(), 64 * KiB),
    ("zstd-default", dict(compress="zstd"), 64 * KiB),
    ("zstd9-1m", dict(compress="zstd:9", block_size="1M"), MiB),
]


@pytest.mark.parametrize("opts,bs", [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_round_trip_through_extract_and_mount(tmp_path, binaries, opts, bs):
    models = {"m%02d_%d" % (i, n): data_for(n, i) for i, n in enumerate(sizes_for(bs))}
    write_sources(tmp_path / "src", models)
    out = pack(tmp_path / "o.apbundle", tmp_path / "src", **opts)
    compression = "zstd" if "compress" in opts else "none"
    if opts.get("fmt") != 1:
        doc, entries = check_v2_bytes(out, models, compression, bs)
        if compression == "zstd":
            assert any(e[2] == 1 for e in entries) and any(e[2] == 0 for e in entries)

    lst = run_apbundle("list", out, check=True).stdout.splitlines()
    assert lst[0].split() == ["NAME", "SIZE", "STORED", "COMPRESSION", "CHECKSUM"]
    rows = {l.split()[0]: l.split() for l in lst[1:]}
    for name, data in models.items():
        row = rows[name]
        assert row[1] == str(len(data)) and row[3] == compression
        assert row[4] == apbformat.checksum_str(data)
        if compression == "none":
            assert row[2] == str(len(data))

    v = run_apbundle("verify", out)
    assert v.returncode == 0, v.stdout + v.stderr
    assert sorted(v.stdout.split()) == sorted(["OK"] * len(models) + list(models))

    for name, data in models.items():
        dst = tmp_path / "x" / name
        dst.parent.mkdir(exist_ok=True)
        run_apbundle("extract", out, name, "-o", dst, check=True)
        assert dst.read_bytes() == data, name

    with mount(out) as d:
        for name, data in models.items():
            with open(d.path(name), "rb") as f:
                assert f.read() == data, name
            if len(data) > 4097:                 # a read across a block boundary
                with open(d.path(name), "rb") as f:
                    f.seek(bs - 3)
                    assert f.read(4103) == data[bs - 3:bs + 4100], name


@pytest.mark.parametrize("opts", [dict(compress="zstd", block_size="4K"), dict(), dict(fmt=1)],
                         ids=["zstd-4k", "none", "v1"])
def test_same_inputs_same_bytes_whatever_the_threads(tmp_path, binaries, opts):
    src = tmp_path / "src"
    write_sources(src, {"big": data_for(5 * MiB + 123, 1),     # several batches in flight
                        "small": data_for(70001, 2)})
    files = [pack(tmp_path / ("o%s.apbundle" % t), src, threads=t, **opts) for t in (1, 2, 3)]
    files.append(pack(tmp_path / "again.apbundle", src, **opts))
    first = files[0].read_bytes()
    for f in files[1:]:
        assert f.read_bytes() == first, f.name


@pytest.mark.parametrize("compress", [None, "zstd"])
def test_flipped_byte_names_model_and_block(tmp_path, binaries, compress):
    src = tmp_path / "src"
    write_sources(src, {"victim": data_for(6 * 4096 + 10, 5), "intact": data_for(3 * 4096, 6)})
    out = pack(tmp_path / "o.apbundle", src, compress=compress, block_size=4096)
    doc, entries, raw = read_v2(out)
    m = next(m for m in doc["models"] if m["name"] == "victim")
    off, length, flags, _ = entries[m["first_chunk"] + 3]
    raw = bytearray(raw)
    raw[off + length // 2] ^= 0x40
    out.write_bytes(bytes(raw))

    v = run_apbundle("verify", out)
    assert v.returncode == 1, v.stdout + v.stderr
    assert "BAD victim: block 3: checksum mismatch" in v.stdout.splitlines(), v.stdout
    assert "OK intact" in v.stdout.splitlines(), v.stdout
    assert "%s: model 'victim' block 3: checksum mismatch" % out in v.stderr, v.stderr
    assert "1 of 2 models failed verification" in v.stderr, v.stderr

    p = run_apbundle("extract", out, "victim", "-o", tmp_path / "v.out")
    assert p.returncode == 1
    assert "model 'victim' block 3: checksum mismatch" in p.stderr, p.stderr
    assert not (tmp_path / "v.out").exists()
    run_apbundle("extract", out, "intact", "-o", tmp_path / "i.out", check=True)
    assert (tmp_path / "i.out").read_bytes() == data_for(3 * 4096, 6)


@pytest.mark.parametrize("args", [
    ["--format", "1", "--compress", "zstd"],
    ["--format", "1", "--block-size", "64K"],
    ["--block-size", "5000"],
    ["--block-size", "0"],
    ["--block-size", "2K"],
    ["--block-size", "32M"],
    ["--chunk-size", "5000"],
    ["--format", "1", "--chunk-size", "64K"],
    ["--compress", "lz4"],
    ["--compress", "zstd:23"],
])
def test_bad_options_are_usage_errors(tmp_path, binaries, args):
    (tmp_path / "f.bin").write_bytes(b"data")
    p = run_apbundle("create", *args, tmp_path / "o.apbundle", tmp_path / "f.bin")
    assert p.returncode == 2, p.stderr
    assert "Usage: apbundle create" in p.stderr, p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.bin"]


def test_chunk_size_is_the_old_spelling_of_block_size(tmp_path, binaries):
    """--chunk-size, the spelling from before the bundle's unit was named a
    block, still works: the same bytes as --block-size, and a bad value is
    reported under the spelling given."""
    src = tmp_path / "src"
    write_sources(src, {"m": data_for(70001, 4)})
    new = pack(tmp_path / "new.apbundle", src, block_size="8K")
    run_apbundle("create", "--chunk-size", "8K", tmp_path / "old.apbundle", src, check=True)
    assert (tmp_path / "old.apbundle").read_bytes() == new.read_bytes()
    doc, _, _ = read_v2(new)
    assert doc["models"][0]["chunk_size"] == 8192
    for spelling in ("--block-size", "--chunk-size"):
        p = run_apbundle("create", spelling, "5000", tmp_path / "o.apbundle", src)
        assert p.returncode == 2, p.stderr
        assert "%s: '5000' is not a multiple of 4096 bytes" % spelling in p.stderr, p.stderr


def test_failed_create_leaves_nothing(tmp_path, binaries):
    (tmp_path / "ok.bin").write_bytes(data_for(300000, 1))
    p = run_apbundle("create", "--compress", "zstd", tmp_path / "o.apbundle",
                     tmp_path / "ok.bin", tmp_path / "missing.bin")
    assert p.returncode == 1
    assert "missing.bin: No such file or directory" in p.stderr, p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ok.bin"]


@pytest.mark.timeout_s(120)
def test_interrupted_create_leaves_the_old_bundle(tmp_path, binaries):
    """SIGINT in the middle of a slow compressed create: the temporary file
    is removed, the previous bundle is untouched, and the command dies of
    the signal."""
    big = tmp_path / "big.bin"
    big.write_bytes(data_for(64 * MiB, 3))
    out = tmp_path / "o.apbundle"
    out.write_bytes(b"previous")
    proc = subprocess.Popen([str(APBUNDLE), "create", "--compress", "zstd:19", str(out), str(big)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: any(tmp_path.glob("o.apbundle.tmp.*")) or proc.poll() is not None,
                   30, what="create's temporary file")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGINT, err
    assert "interrupted" in err, err
    assert out.read_bytes() == b"previous"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["big.bin", "o.apbundle"]


def _run_on_terminal(*args):
    """Run apbundle with stderr on a pseudo-terminal; (returncode, stdout,
    everything written to the terminal)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([str(APBUNDLE)] + [str(a) for a in args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        slave = -1
        tty = read_terminal(master)
        out = proc.stdout.read()
        proc.wait(timeout=60)
        return proc.returncode, out.decode(), tty.decode(errors="replace")
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)


def test_progress_on_a_terminal(tmp_path, binaries):
    """Above 64 MiB, create and verify redraw one progress line on a
    terminal, reach 100% and clear it (create then says what it wrote); the
    results stay on stdout."""
    big = tmp_path / "big.bin"
    big.write_bytes(data_for(65 * MiB, 4))
    out = tmp_path / "o.apbundle"
    rc, _, tty = _run_on_terminal("create", "--compress", "zstd:1", out, big)
    assert rc == 0, tty
    assert "\r 100% 65.0 MiB / 65.0 MiB" in tty, tty[-300:]
    # The line is cleared; create's summary follows (test_cli_create_progress.py).
    _, summary = tty.rsplit("\r\x1b[K", 1)
    assert summary.startswith("created %s: 1 model, 65.0 MiB in, " % out), tty[-200:]
    rc, stdout, tty = _run_on_terminal("verify", out)
    assert rc == 0, tty
    assert stdout == "OK big.bin\n"
    assert "\r 100% 65.0 MiB / 65.0 MiB" in tty, tty[-300:]
