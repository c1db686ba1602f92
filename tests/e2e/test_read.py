"""Reading a mounted bundle behaves like reading a local read-only file.

One bundle per module run (built once by `apbundle create`, once by the pure
Python writer), mounted with a cache (8 MiB) smaller than the largest model
(64 MiB) so full reads page through the cache.
"""

import hashlib
import mmap
import os
import random
import stat

import numpy as np
import pytest

import apbformat
from conftest import (KiB, MiB, check_bundle_mtime, mount, open_direct, odirect_pread, pack,
                      read_all, write_sources)

SIZES = {
    "size0.bin": 0,
    "size1.bin": 1,
    "size4095.bin": 4095,
    "size4096.bin": 4096,
    "size4097.bin": 4097,
    "size1M123.bin": MiB + 123,
    "size64M.bin": 64 * MiB,
    "a/b/c.bin": 10000,
    "a/b/d.txt": 17,
    "a/e.bin": 5000,
    "z/deep/er/f": 1,
}
FLAT = [n for n in SIZES if "/" not in n]
RESERVED = {".stats", ".metrics", ".control"}
CHUNK = 64 * KiB
OPTS = {"max_memory": "8M", "chunk_size": "64K", "eviction": "lru"}


def _models():
    return {name: apbformat.random_bytes(size, seed=1000 + i)
            for i, (name, size) in enumerate(sorted(SIZES.items()))}


@pytest.fixture(scope="module", params=["apbundle-create", "python-writer"])
def mounted(request, tmp_path_factory, binaries):
    models = _models()
    work = tmp_path_factory.mktemp("read")
    bundle = work / "read.apbundle"
    if request.param == "apbundle-create":
        paths = write_sources(work / "src", models)
        pack(bundle, *["%s=%s" % (n, p) for n, p in paths.items()])
    else:
        apbformat.write_v1(bundle, sorted(models.items()))
    with mount(bundle, OPTS, persistent=True) as d:
        yield d, models, bundle


def assert_same(got, expected, what):
    if got == expected:
        return
    n = min(len(got), len(expected))
    diff = np.flatnonzero(np.frombuffer(got, np.uint8, n) != np.frombuffer(expected, np.uint8, n))
    first = int(diff[0]) if len(diff) else n
    pytest.fail("%s: got %d bytes (sha256 %s), expected %d bytes (sha256 %s); "
                "first difference at byte %d" % (
                    what, len(got), hashlib.sha256(got).hexdigest()[:16], len(expected),
                    hashlib.sha256(expected).hexdigest()[:16], first))


# -- namespace ---------------------------------------------------------------

def test_root_listing(mounted):
    d, _, _ = mounted
    names = set(os.listdir(d.mnt))
    assert names - RESERVED == set(FLAT) | {"a", "z"}


@pytest.mark.parametrize("directory,entries", [
    ("a", {"b", "e.bin"}),
    ("a/b", {"c.bin", "d.txt"}),
    ("z", {"deep"}),
    ("z/deep", {"er"}),
    ("z/deep/er", {"f"}),
])
def test_subdirectory_listing(mounted, directory, entries):
    d, _, _ = mounted
    assert set(os.listdir(d.path(directory))) == entries
    assert len(os.listdir(d.path(directory))) == len(entries), "duplicate entries"


@pytest.mark.parametrize("name", sorted(SIZES))
def test_stat_file(mounted, name):
    d, _, _ = mounted
    st = os.stat(d.path(name))
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o444
    assert st.st_size == SIZES[name]
    check_bundle_mtime(d, st)


@pytest.mark.parametrize("directory", ["", "a", "a/b", "z/deep/er"])
def test_stat_directory(mounted, directory):
    d, _, _ = mounted
    st = os.stat(d.path(directory))
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o555


# -- contents ----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SIZES))
def test_full_read_is_byte_exact(mounted, name):
    d, models, _ = mounted
    assert_same(read_all(d.path(name)), models[name], name)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_small_sequential_reads(mounted, name):
    """Odd-sized read() calls crossing every chunk boundary."""
    d, models, _ = mounted
    out = bytearray()
    with open(d.path(name), "rb", buffering=0) as f:
        while True:
            b = f.read(4097 * 7 if SIZES[name] > 8 * MiB else 4097)
            if not b:
                break
            out += b
    assert_same(bytes(out), models[name], name)


def _pread_plan(size, rng):
    plan = [(0, 1), (0, 4096), (0, CHUNK), (0, CHUNK + 1), (max(size - 1, 0), 1),
            (max(size - 1, 0), 100), (size, 1), (size, 4096), (size + 12345, 10)]
    for b in (4095, 4096, 4097, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK - 5):
        if b < size:
            plan.append((b, 2 * CHUNK + 3))
    for _ in range(150):
        off = rng.randrange(0, size + 1) if size else 0
        plan.append((off, rng.choice([1, 7, 4096, 5000, CHUNK, 3 * CHUNK + 11,
                                      rng.randrange(1, 600 * KiB)])))
    return plan


@pytest.mark.parametrize("name", sorted(SIZES))
def test_random_pread(mounted, name):
    d, models, _ = mounted
    data = models[name]
    rng = random.Random(name)
    fd = os.open(d.path(name), os.O_RDONLY)
    try:
        for off, n in _pread_plan(len(data), rng):
            assert_same(os.pread(fd, n, off), data[off:off + n],
                        "%s pread(%d, off=%d)" % (name, n, off))
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_random_pread_odirect(mounted, name):
    d, models, _ = mounted
    data = models[name]
    rng = random.Random("direct" + name)
    fd = open_direct(d.path(name))
    try:
        for off, n in _pread_plan(len(data), rng)[:60]:
            assert_same(odirect_pread(fd, n, off), data[off:off + n],
                        "%s O_DIRECT pread(%d, off=%d)" % (name, n, off))
    finally:
        os.close(fd)


@pytest.mark.parametrize("flags", [mmap.MAP_SHARED, mmap.MAP_PRIVATE], ids=["shared", "private"])
@pytest.mark.parametrize("name", sorted(n for n in SIZES if SIZES[n] > 0))
def test_mmap(mounted, name, flags):
    d, models, _ = mounted
    data = models[name]
    rng = random.Random("mmap" + name)
    with open(d.path(name), "rb") as f:
        with mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ) as m:
            assert len(m) == len(data)
            for _ in range(100):
                off = rng.randrange(0, len(data))
                n = rng.randrange(1, 200 * KiB)
                assert_same(m[off:off + n], data[off:off + n], "%s mmap[%d:+%d]" % (name, off, n))
            assert_same(m[:], data, name + " whole mmap")


def test_mmap_empty_file_refused_like_local(mounted):
    d, _, _ = mounted
    with open(d.path("size0.bin"), "rb") as f:
        with pytest.raises(ValueError):
            mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        assert f.read() == b""


@pytest.mark.parametrize("name", sorted(SIZES))
def test_lseek_end_and_read_past_eof(mounted, name):
    d, models, _ = mounted
    size = SIZES[name]
    fd = os.open(d.path(name), os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_END) == size
        assert os.read(fd, 100) == b""
        if size:
            assert os.lseek(fd, -1, os.SEEK_END) == size - 1
            assert os.read(fd, 100) == models[name][-1:]
        assert os.lseek(fd, size + 5000, os.SEEK_SET) == size + 5000
        assert os.read(fd, 10) == b""
        assert os.pread(fd, 10, size) == b""
        assert os.pread(fd, 4096, size + 1) == b""
        assert os.lseek(fd, 0, os.SEEK_CUR) == size + 5000
    finally:
        os.close(fd)


def test_two_opens_of_one_file_are_independent(mounted):
    d, models, _ = mounted
    data = models["size1M123.bin"]
    with open(d.path("size1M123.bin"), "rb") as f1, open(d.path("size1M123.bin"), "rb") as f2:
        f1.seek(500000)
        a = f1.read(1000)
        b = f2.read(1000)
        assert a == data[500000:501000]
        assert b == data[:1000]


def test_directory_cannot_be_read(mounted):
    d, _, _ = mounted
    with pytest.raises(IsADirectoryError):
        with open(d.path("a"), "rb") as f:
            f.read()
