"""How the daemon reads the bundle file: backing_io=direct (the default) keeps
the bundle's pages out of the kernel's page cache, since the daemon caches
chunks itself; backing_io=buffered goes through it. Both return exact bytes,
also for the unaligned tail of a model, and direct falls back to buffered
where the filesystem has no O_DIRECT (tmpfs)."""
import ctypes
import mmap
import os

import pytest

import apbformat
from conftest import KiB, MiB, direct_read, mount, read_all, run_daemon_expect_failure

PAGE = 4096
# A model of whole chunks and one whose last chunk is short (its tail is
# read through the page cache even with backing_io=direct).
MODELS = [("aligned.bin", apbformat.random_bytes(4 * MiB, 1)),
          ("tail.bin", apbformat.random_bytes(3 * MiB + 1234, 2))]
OPTS = {"max_memory": "32M", "chunk_size": "64K", "prefetch": "off",
        "prefetch_count": "0"}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                       ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def cached_pages(path):
    """Pages of path in the page cache (mincore of a shared mapping)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            vec = ctypes.create_string_buffer((size + PAGE - 1) // PAGE)
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            return sum(b & 1 for b in vec.raw)
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def drop_file_pages(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


@pytest.fixture
def bundle(tmp_path, binaries):
    return apbformat.write_v1(tmp_path / "b.apbundle", MODELS)


def read_models_through(bundle, opts):
    drop_file_pages(bundle)
    assert cached_pages(bundle) == 0
    with mount(bundle, opts) as d:
        for name, data in MODELS:
            assert read_all(d.path(name)) == data, name
        assert d.stats()["io"]["errors"] == 0
    return cached_pages(bundle)


def test_direct_keeps_the_bundle_out_of_the_page_cache(bundle):
    pages = read_models_through(bundle, OPTS)
    # header + manifest, and the last (short) chunk of tail.bin, which is
    # read buffered: at most 64 KiB of it
    assert pages <= 1 + 64 * KiB // PAGE, pages


def test_buffered_reads_through_the_page_cache(bundle):
    pages = read_models_through(bundle, dict(OPTS, backing_io="buffered"))
    data_pages = sum(len(d) for _, d in MODELS) // PAGE
    assert pages >= data_pages, (pages, data_pages)


@pytest.mark.parametrize("chunk", ["4K", "64K", "1M"])
def test_direct_bytes_at_every_chunk_size(tmp_path, binaries, chunk):
    b = apbformat.write_v1(tmp_path / "b.apbundle", MODELS)
    with mount(b, dict(OPTS, chunk_size=chunk)) as d:
        for name, data in MODELS:
            for off, n in ((0, len(data)), (len(data) - 5000, 5000),
                           (12345, 300000), (len(data) - 1, 10)):
                # O_DIRECT after a clear: each read pages its chunks in from
                # the bundle file (through the page cache, after the first
                # read, they never reached the daemon)
                d.control("clear")
                before = d.stats()["io"]["backing_bytes_read"]
                assert direct_read(d.path(name), n, off) == data[off:off + n], (name, off, n)
                assert d.stats()["io"]["backing_bytes_read"] > before


def test_direct_falls_back_on_tmpfs(tmp_path, binaries):
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    path = os.path.join("/dev/shm", "apb-backing-%d.apbundle" % os.getpid())
    try:
        apbformat.write_v1(path, MODELS)
        with mount(path, OPTS, mnt=tmp_path / "mnt") as d:
            for name, data in MODELS:
                assert read_all(d.path(name)) == data, name
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_bad_backing_io_value(bundle, tmp_path):
    (tmp_path / "mnt").mkdir()
    rc, log, mounted = run_daemon_expect_failure(
        bundle, tmp_path / "mnt", dict(OPTS, backing_io="sometimes"))
    assert rc == 2 and not mounted
    assert "bad option backing_io=sometimes: expected direct or buffered" in log
