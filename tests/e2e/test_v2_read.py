"""Reading format version 2 through the mount (docs/FORMAT.md, docs/USAGE.md).

Bundles come from apbformat.write_v2 (independent of the C writer). Every
byte of models sized around block boundaries, stored raw ("none"), as zstd
frames, and raw inside a "zstd" model (incompressible blocks), must read
back exactly, whatever the mount's cache chunk size is against the bundle's
block size.

A byte flipped inside block k of a model must fail exactly the reads whose
cache chunk touches block k with EIO, count one io.checksum_errors per
failed page-in, never be cached, and be named in the log once; every other
byte, of that model and of others, is still served exactly.
"""

import errno
import os
import re

import pytest

import apbformat
from conftest import KiB, direct_read, mount, read_all

BS = 64 * KiB     # the bundle's block size (apbformat's default)
SIZES = (0, 1, 4095, 4096, 4097, BS - 1, BS, BS + 1, 3 * BS + 5)
KINDS = ("none", "zstd-text", "zstd-random")


def model_data(kind, size, seed):
    if kind == "zstd-text":
        return apbformat.compressible_bytes(size, seed)
    return apbformat.random_bytes(size, seed)


def boundary_models(bs):
    sizes = sorted(set(s for s in SIZES if s < BS) | {bs - 1, bs, bs + 1, 3 * bs + 5})
    out = []
    for k, kind in enumerate(KINDS):
        for i, size in enumerate(sizes):
            name = "%s/%07d.bin" % (kind, size)
            comp = "none" if kind == "none" else "zstd"
            out.append((name, model_data(kind, size, 100 * k + i), {"compression": comp}))
    return out


def check_every_byte(d, models):
    for name, data, _ in models:
        assert read_all(d.path(name)) == data, name
        # Reads that start and end inside blocks, across boundaries.
        with open(d.path(name), "rb", buffering=0) as f:
            for off in (0, 1, 4095, BS - 3, BS, 2 * BS + 4097):
                for n in (1, 4096, BS + 2):
                    assert os.pread(f.fileno(), n, off) == data[off:off + n], (name, off, n)


@pytest.mark.parametrize("bundle_bs,mount_cs", [
    (64 * KiB, "64K"), (64 * KiB, "4K"), (64 * KiB, "256K"), (4 * KiB, "64K"), (12 * KiB, "8K")])
def test_every_byte_of_models_around_block_boundaries(tmp_path, binaries, bundle_bs, mount_cs):
    models = boundary_models(bundle_bs)
    b = apbformat.write_v2(tmp_path / "b.apbundle", models, block_size=bundle_bs)
    # The layouts the test means to cover are really there.
    flags = {c["flags"] for c in b.blocks}
    assert flags == {0, apbformat.FLAG_ZSTD}
    raw_in_zstd = [e for e in b.entries if e["compression"] == "zstd"
                   and e["size"] and b.blocks[e["first_chunk"]]["flags"] == 0]
    assert raw_in_zstd, "no raw block inside a zstd model"
    with mount(tmp_path / "b.apbundle", {"max_memory": "4M", "chunk_size": mount_cs}) as d:
        check_every_byte(d, models)
        s = d.stats()
        assert s["io"]["errors"] == 0 and s["io"]["checksum_errors"] == 0
        assert d.log().count("checksum") == 0, d.log()


N_BLOCKS = 8
A = apbformat.random_bytes(N_BLOCKS * BS + 300, 7)         # "none"
Z = apbformat.compressible_bytes(N_BLOCKS * BS + 300, 8)   # "zstd", frames
OTHER = apbformat.random_bytes(3 * BS, 9)


def corrupt_bundle(path, bad):
    """a.bin (none), z.bin (zstd), other.bin; bad: {name: block index} of
    blocks with one byte flipped in their stored bytes."""
    models = [("a.bin", A, {"compression": "none"}), ("z.bin", Z, {"compression": "zstd"}),
              ("other.bin", OTHER)]
    b = apbformat.V2Bundle(models)
    flips = []
    for name, k in bad.items():
        e = b.entry(name, k)
        flips.append((e["offset"] + e["length"] // 2, 0x10))
    b.write(path, flip=flips)
    assert b.entry("z.bin", 1)["flags"] == apbformat.FLAG_ZSTD
    return b


@pytest.mark.parametrize("mount_cs", [4 * KiB, 64 * KiB, 256 * KiB])
def test_flipped_byte_fails_only_reads_of_its_block(tmp_path, binaries, mount_cs):
    bad = {"a.bin": 2, "z.bin": 5}
    corrupt_bundle(tmp_path / "c.apbundle", bad)
    data = {"a.bin": A, "z.bin": Z}
    opts = {"max_memory": "8M", "chunk_size": "%dK" % (mount_cs // KiB), "prefetch": "off",
            "prefetch_count": "0"}
    with mount(tmp_path / "c.apbundle", opts) as d:
        failed = 0
        step = min(mount_cs, BS)   # one FUSE read each (the kernel splits above 128K)
        for name, k in bad.items():
            src = data[name]
            for off in range(0, len(src), step):
                n = min(step, len(src) - off)
                j = off // mount_cs     # the cache chunk this read pages in
                if j * mount_cs < (k + 1) * BS and (j + 1) * mount_cs > k * BS:
                    with pytest.raises(OSError) as ei:
                        direct_read(d.path(name), n, off)
                    assert ei.value.errno == errno.EIO, os.strerror(ei.value.errno)
                    failed += 1
                else:
                    assert direct_read(d.path(name), n, off) == src[off:off + n], (name, off)
        # Nothing bad was cached: the same read fails (and counts) again.
        with pytest.raises(OSError) as ei:
            direct_read(d.path("a.bin"), 4096, 2 * BS)
        assert ei.value.errno == errno.EIO
        failed += 1
        assert read_all(d.path("other.bin")) == OTHER
        s = d.stats()
        assert s["io"]["checksum_errors"] == failed
        assert s["io"]["errors"] == failed
        m = d.metrics()
        assert re.search(r"^apbundlefs_io_checksum_errors_total %d$" % failed, m, re.M), m
        # The cache chunks holding block 2 stayed out of the cache.
        assert s["models"]["a.bin"]["resident_bytes"] == len(A) - max(BS, mount_cs)
        log = d.log()
        for name, k in bad.items():
            line = "model '%s' block %d (bytes %d to %d): checksum mismatch" % (
                name, k, k * BS, (k + 1) * BS)
            assert log.count(line) == 1, log
        assert log.count("checksum mismatch") == 2, log


def test_other_models_of_a_corrupt_bundle_read_exactly(tmp_path, binaries):
    corrupt_bundle(tmp_path / "c.apbundle", {"a.bin": 0, "z.bin": N_BLOCKS})
    with mount(tmp_path / "c.apbundle", {"max_memory": "8M"}) as d:
        assert read_all(d.path("other.bin")) == OTHER
        # z.bin's last (short) block is bad: everything before it reads.
        assert direct_read(d.path("z.bin"), N_BLOCKS * BS, 0) == Z[:N_BLOCKS * BS]
        with pytest.raises(OSError) as ei:
            direct_read(d.path("z.bin"), 4096, N_BLOCKS * BS)
        assert ei.value.errno == errno.EIO
        assert direct_read(d.path("a.bin"), 2 * BS, BS) == A[BS:3 * BS]
        # prefetch (on here) may page in a.bin's bad block 0 too
        assert d.stats()["io"]["checksum_errors"] >= 1
        assert d.log().count("model 'z.bin' block %d (" % N_BLOCKS) == 1, d.log()


def test_corrupt_zstd_frame_header(tmp_path, binaries):
    """A frame whose header is damaged does not decode at all."""
    b = apbformat.V2Bundle([("z.bin", Z, {"compression": "zstd"})])
    e = b.entry("z.bin", 3)
    b.write(tmp_path / "f.apbundle", flip=[(e["offset"], 0xff)])   # the frame's magic
    opts = {"max_memory": "8M", "prefetch": "off", "prefetch_count": "0"}
    with mount(tmp_path / "f.apbundle", opts) as d:
        with pytest.raises(OSError) as ei:
            direct_read(d.path("z.bin"), BS, 3 * BS)
        assert ei.value.errno == errno.EIO
        assert direct_read(d.path("z.bin"), BS, 2 * BS) == Z[2 * BS:3 * BS]
        assert direct_read(d.path("z.bin"), BS, 4 * BS) == Z[4 * BS:5 * BS]
        assert d.stats()["io"]["checksum_errors"] == 1
        assert d.log().count("model 'z.bin' block 3 (") == 1, d.log()


def log_lines(d):
    """The daemon's log lines (it runs in the foreground, log to a file)."""
    return [line for line in d.log().splitlines() if line.startswith("apbundlefs:")]


def bad_bundle(path, nblocks):
    """One model of nblocks 4 KiB blocks, every one with a byte flipped."""
    data = apbformat.random_bytes(nblocks * 4096, 3)
    b = apbformat.V2Bundle([("m.bin", data)], block_size=4096)
    b.write(path, flip=[(c["offset"] + 1, 1) for c in b.blocks])


BAD_OPTS = {"max_memory": "1M", "chunk_size": "4K", "prefetch": "off", "prefetch_count": "0"}


def read_fails(d, k):
    with pytest.raises(OSError) as ei:
        direct_read(d.path("m.bin"), 4096, k * 4096)
    assert ei.value.errno == errno.EIO, (k, os.strerror(ei.value.errno))


def test_bad_block_log_is_bounded(tmp_path, binaries):
    """40 bad blocks, read 3 times each: the log names each once, in one
    line (each failed read was a line of its own as well: 160 lines); the
    counters count every failed read."""
    bad_bundle(tmp_path / "m.apbundle", 40)
    with mount(tmp_path / "m.apbundle", BAD_OPTS) as d:
        for _ in range(3):
            for k in range(40):
                read_fails(d, k)
        s = d.stats()
        assert s["io"]["checksum_errors"] == 120
        assert s["io"]["errors"] == 120
        lines = log_lines(d)
        assert len(lines) == 40, "\n".join(lines)
        assert all("checksum mismatch" in line for line in lines), lines
        assert lines.count("apbundlefs: model 'm.bin' block 39 (bytes 159744 to 163840): "
                           "checksum mismatch after a second read; reads of it fail "
                           "with EIO") == 1, lines


def test_read_error_log_has_a_cap(tmp_path, binaries):
    """More distinct bad blocks than the log names (1024): one line each up
    to the cap, then one line saying so, then nothing; counting goes on."""
    n = 1030
    bad_bundle(tmp_path / "m.apbundle", n)
    with mount(tmp_path / "m.apbundle", BAD_OPTS) as d:
        for _ in range(2):
            for k in range(n):
                read_fails(d, k)
        s = d.stats()
        assert s["io"]["checksum_errors"] == 2 * n
        assert s["io"]["errors"] == 2 * n
        lines = log_lines(d)
        assert len(lines) == 1025, (len(lines), lines[-3:])
        assert lines[-1] == ("apbundlefs: more than 1024 read errors; not naming further "
                             "ones (see io.errors and io.checksum_errors)"), lines[-1]
        assert "block 1023 (" in lines[-2] and "block 1024 (" not in d.log()
