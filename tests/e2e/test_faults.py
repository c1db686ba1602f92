"""Faults under a running mount: the bundle changed under it, a chunk's
memory that cannot be had, the daemon killed or stopped mid-read.

Truncation of the bundle is in test_io_errors.py, SIGTERM/SIGINT with one
reader and fusermount3 -u in test_lifecycle.py; these go further.
"""

import contextlib
import errno
import os
import signal

import pytest

import apbformat
from conftest import (KiB, LoopReader, fusermount_u, is_mounted, mount, odirect_pread,
                      open_direct, stop_under_readers, wait_until)

CH = 64 * KiB
A = apbformat.random_bytes(4 * CH, 81)
B = apbformat.random_bytes(3 * CH + 100, 82)
OPTS = {"max_memory": "1M", "chunk_size": "64K", "prefetch": "off", "prefetch_count": "0"}


@pytest.fixture
def bundle(tmp_path):
    b = apbformat.V1Bundle([("a.bin", A), ("b.bin", B)])
    return b, b.write(tmp_path / "f.apbundle")


def pread_errno(fd, length, off):
    try:
        odirect_pread(fd, length, off)
    except OSError as e:
        return e.errno
    return 0


def bump_mtime(path):
    """Make sure the change shows in mtime, whatever the clock granularity."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))


# ---------------------------------------------------------------- changes

# Changing a served object under the mount is test_remote_mount.py's.
CHANGES_THE_FILE = pytest.mark.local_only("changes the bundle file under the mount")


def rewrite_in_place(b, path):
    """cp-like: same size, other bytes in b.bin."""
    off = b.entries[1]["offset"]
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(bytes(x ^ 0xFF for x in B[:CH]))
    bump_mtime(path)
    return "(modified, size %d unchanged)" % os.path.getsize(path)


def append(b, path):
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b"x" * 4096)
    return "(size %d -> %d)" % (size, size + 4096)


def rewrite_smaller(b, path):
    """Another, smaller bundle written over the file (open O_TRUNC, write):
    shorter, but not a truncation of the mounted one."""
    size = os.path.getsize(path)
    data = apbformat.V1Bundle([("a.bin", A[::-1]), ("b.bin", B[:CH])]).to_bytes()
    assert len(data) < size
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate(len(data))
    return "(size %d -> %d)" % (size, len(data))


@CHANGES_THE_FILE
@pytest.mark.parametrize("change", [rewrite_in_place, append, rewrite_smaller])
def test_bundle_changed_in_place_fails_every_read(bundle, binaries, change):
    b, path = bundle
    with mount(path, OPTS) as d:
        fd = open_direct(d.path("a.bin"))
        try:
            assert odirect_pread(fd, CH, 0) == A[:CH]       # resident from here on
            why = change(b, path)
            # a page-in notices; from then on hits fail too: no mix of old and new
            assert pread_errno(fd, CH, CH) == errno.EIO
            assert pread_errno(fd, CH, 0) == errno.EIO
        finally:
            os.close(fd)
        fd = open_direct(d.path("b.bin"))              # opens still work
        try:
            assert pread_errno(fd, CH, 0) == errno.EIO
        finally:
            os.close(fd)
        s = d.stats()                                   # the control files still work
        assert s["io"]["errors"] == 3
        assert s["cache"]["resident_chunks"] == 0, "the cache was not dropped"
        log = d.log()
        line = "%s changed since mount %s" % (path, why)
        assert log.count("changed since mount") == 1, log
        assert line in log, log


@CHANGES_THE_FILE
@pytest.mark.parametrize("how", ["replace", "remove"])
def test_bundle_replaced_or_removed_is_noticed(bundle, tmp_path, binaries, how):
    b, path = bundle
    with mount(path, OPTS) as d:
        ino = os.stat(path).st_ino
        if how == "replace":                # as `apbundle create` does: rename over it
            new = apbformat.write_v1(tmp_path / "new.apbundle", [("a.bin", A[::-1]), ("b.bin", B)])
            os.replace(new, path)
            why = "(replaced: inode %d -> %d)" % (ino, os.stat(path).st_ino)
        else:
            os.unlink(path)
            why = "(removed)"
        served = []

        def failed():
            # clear: every attempt is a page-in, which checks the path now and then
            d.control("clear")
            fd = open_direct(d.path("a.bin"))
            try:
                data = odirect_pread(fd, CH, 0)
            except OSError as e:
                assert e.errno == errno.EIO, os.strerror(e.errno)
                return True
            finally:
                os.close(fd)
            served.append(data)
            return False

        wait_until(failed, 10, what="the replaced bundle to be noticed")
        # until then the old inode's bytes, never the new file's
        assert all(x == A[:CH] for x in served)
        assert "%s changed since mount %s" % (path, why) in d.log(), d.log()


@CHANGES_THE_FILE
def test_truncated_then_rewritten_is_a_change(bundle, binaries):
    """A truncation keeps the rest served (test_io_errors.py); growing back
    with other bytes afterwards is a change like any other."""
    b, path = bundle
    with mount(path, OPTS) as d:
        size = os.path.getsize(path)
        cut = b.entries[1]["offset"] + CH
        os.truncate(path, cut)
        with open(d.path("a.bin"), "rb") as f:
            assert f.read() == A
        assert "truncated since mount (size %d -> %d)" % (size, cut) in d.log()
        with open(path, "ab") as f:
            f.write(b"\0" * (size - cut))
        bump_mtime(path)
        d.control("clear")
        with pytest.raises(OSError) as ei:
            with open(d.path("a.bin"), "rb") as f:
                f.read()
        assert ei.value.errno == errno.EIO
        assert "changed since mount (size %d -> %d)" % (cut, size) in d.log(), d.log()


# ---------------------------------------------------------- chunk memory

def test_failed_chunk_allocation_fails_that_read_only(bundle, binaries, monkeypatch):
    """APBFS_FAULT_ALLOC_EVERY=3: the memory of every third chunk loaded
    cannot be had. That read fails with ENOMEM; the daemon serves the next
    ones, a retry of the failed chunk included."""
    b, path = bundle
    monkeypatch.setenv("APBFS_FAULT_ALLOC_EVERY", "3")
    loads = failed = 0
    with mount(path, OPTS) as d:
        for name, data in (("a.bin", A), ("b.bin", B)):
            fd = open_direct(d.path(name))
            try:
                for off in range(0, len(data), CH):
                    loads += 1
                    if loads % 3 == 0:
                        assert pread_errno(fd, CH, off) == errno.ENOMEM, (name, off)
                        failed += 1
                        loads += 1
                    assert odirect_pread(fd, CH, off) == data[off:off + CH]
                assert odirect_pread(fd, CH, 0) == data[:CH]     # a hit: no load
            finally:
                os.close(fd)
        assert failed == 3
        s = d.stats()
        assert s["io"]["errors"] == failed
        assert s["cache"]["misses"] == loads
        assert s["models"]["a.bin"]["resident_bytes"] == len(A)
        assert s["models"]["b.bin"]["resident_bytes"] == len(B)
        assert "Cannot allocate memory" in d.log()


# ------------------------------------------------------- killed, stopped

def test_sigkill_then_unmount_and_remount(bundle, binaries):
    b, path = bundle
    mnt = path.parent / "mnt"
    with mount(path, OPTS, mnt=mnt, expect_clean_exit=False) as d:
        held = os.open(str(mnt / "a.bin"), os.O_RDONLY)
        assert os.pread(held, 100, 0) == A[:100]
        d.proc.kill()
        d.proc.wait(10)
        assert is_mounted(mnt), "the kernel keeps a dead mount until it is unmounted"
        with pytest.raises(OSError) as ei:
            os.listdir(mnt)
        assert ei.value.errno == errno.ENOTCONN
        with contextlib.suppress(OSError):     # its flush has no daemon to go to
            os.close(held)
        assert fusermount_u(mnt) == 0
        assert not is_mounted(mnt)
    with mount(path, OPTS, mnt=mnt) as d2:
        with open(d2.path("b.bin"), "rb") as f:
            assert f.read() == B


def test_sigterm_with_several_readers_in_flight(bundle, binaries):
    b, path = bundle
    # a budget of 2 chunks per reader keeps pages coming in while it stops
    with mount(path, dict(OPTS, max_memory="512K"), expect_clean_exit=False) as d:
        stats = open(d.path(".stats"), "rb")        # and a control file held open
        readers = [LoopReader(d.path(n), x, 2 * CH, CH, (i * CH) % len(x))
                   for i, (n, x) in enumerate([("a.bin", A), ("b.bin", B)] * 2)]
        for r in readers:
            r.start()
        wait_until(lambda: min(r.reads for r in readers) >= 3
                   or any(r.errno for r in readers), 20, what="every reader to be reading")
        assert [(r.reads >= 3, r.errno) for r in readers] == [(True, 0)] * 4
        stop_under_readers(d, signal.SIGTERM, readers, [stats])
