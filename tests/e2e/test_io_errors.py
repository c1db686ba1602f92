"""A backing-file I/O error fails only the read that hits it (docs/USAGE.md,
"The mounted tree").

The bundle file is truncated under a running mount: reads of chunks that
are gone must fail with EIO, be counted in io.errors (every read) and
logged with the model and chunk (once each); every other byte is still served, and no wrong byte is returned.
"""

import errno
import os
import threading

import pytest

import apbformat
from conftest import (KiB, MiB, direct_read, mount, odirect_pread, open_direct, read_all,
                      wait_until)

CH = 64 * KiB
FIRST = apbformat.random_bytes(2 * CH, 61)
LAST = apbformat.random_bytes(4 * CH, 62)


def test_truncated_backing_file_gives_eio(tmp_path, binaries):
    b = apbformat.V1Bundle([("first.bin", FIRST), ("last.bin", LAST)])
    path = b.write(tmp_path / "t.apbundle")
    last_off = b.entries[1]["offset"]
    with mount(path, {"max_memory": "1M", "chunk_size": "64K"}) as d:
        os.truncate(path, last_off + 2 * CH)          # chunks 2 and 3 of last.bin are gone
        fd = open_direct(d.path("last.bin"))
        try:
            assert odirect_pread(fd, CH, 0) == LAST[:CH]
            assert odirect_pread(fd, CH, CH) == LAST[CH:2 * CH]
            for off in (2 * CH, 3 * CH) * 3:
                with pytest.raises(OSError) as ei:
                    odirect_pread(fd, CH, off)
                assert ei.value.errno == errno.EIO, os.strerror(ei.value.errno)
        finally:
            os.close(fd)
        with open(d.path("first.bin"), "rb") as f:
            assert f.read() == FIRST
        s = d.stats()
        assert s["io"]["errors"] == 6
        assert s["io"]["checksum_errors"] == 0
        m = s["models"]["last.bin"]
        assert m["resident_bytes"] == 2 * CH, "a failed chunk must not stay resident"
        # the daemon keeps serving
        fd = open_direct(d.path("last.bin"))
        try:
            assert odirect_pread(fd, CH, 0) == LAST[:CH]
        finally:
            os.close(fd)
        # each lost chunk named once, however often it is read
        log = d.log()
        for k in (2, 3):
            line = "apbundlefs: model 'last.bin' chunk %d (bytes %d to %d): Input/output error" % (
                k, k * CH, (k + 1) * CH)
            assert log.count(line) == 1, "the I/O error was not logged once with the model:\n" + log
        assert log.count("last.bin") == 2, log


class CutReader(threading.Thread):
    """O_DIRECT reads of one chunk at a time of model name (bytes data),
    striding through it, until halt: each must return exact bytes, or fail
    with EIO if the chunk lies past cut (the model's bytes kept once the
    bundle is truncated; None: all). wrong: what broke that rule."""

    def __init__(self, d, name, data, cut, start):
        super().__init__(daemon=True)
        self.path, self.data, self.cut, self.off = d.path(name), data, cut, start
        self.halt = threading.Event()
        self.reads, self.wrong = 0, []

    def run(self):
        fd = open_direct(self.path)
        try:
            while not self.halt.is_set() and not self.wrong:
                end = min(self.off + CH, len(self.data))
                try:
                    got = os.pread(fd, end - self.off, self.off)
                    if got != self.data[self.off:end]:
                        self.wrong.append((self.off, "wrong bytes"))
                except OSError as e:
                    if e.errno != errno.EIO or self.cut is None or end <= self.cut:
                        self.wrong.append((self.off, os.strerror(e.errno)))
                self.reads += 1
                self.off = (self.off + 5 * CH) % len(self.data)
        finally:
            os.close(fd)


CUT_RUNS = 20
KEPT = apbformat.random_bytes(2 * MiB, 63)
TAIL = apbformat.random_bytes(16 * MiB, 64)


@pytest.mark.timeout_s(240)
def test_truncation_under_readers_is_never_a_change(tmp_path, binaries):
    """A truncation stores the new size and the new mtime one after the
    other; a page-in in between saw the new size with the old mtime, took
    it for the truncation, and then the mtime for a rewrite in place: every
    read failed until remount (4 runs of 10, backing.c). Truncated under 8
    O_DIRECT readers that page in all the time, CUT_RUNS times: never a
    change, the kept bytes exact, the lost ones EIO."""
    b = apbformat.V1Bundle([("kept.bin", KEPT), ("tail.bin", TAIL)])
    image = b.to_bytes()
    tail_off = b.entries[1]["offset"]
    keep = 3 * CH + 4096                  # of tail.bin; not on a chunk boundary
    opts = {"max_memory": "1M", "chunk_size": "64K", "prefetch": "off", "prefetch_count": "0"}
    for run in range(CUT_RUNS):
        path = tmp_path / "t.apbundle"
        path.write_bytes(image)
        with mount(path, opts) as d:
            readers = [CutReader(d, "kept.bin", KEPT, None, i * CH) for i in range(4)]
            readers += [CutReader(d, "tail.bin", TAIL, keep, i * 7 * CH) for i in range(4)]
            for r in readers:
                r.start()
            try:
                wait_until(lambda: all(r.reads >= 20 for r in readers), 30,
                           what="readers to be under way")
                os.truncate(path, tail_off + keep)
                after = [r.reads for r in readers]
                wait_until(lambda: all(r.reads >= n + 20 or r.wrong
                                       for r, n in zip(readers, after)), 30,
                           what="reads after the truncation")
            finally:
                for r in readers:
                    r.halt.set()
                for r in readers:
                    r.join(30)
            log = d.log()
            assert "changed since mount" not in log, "run %d:\n%s" % (run, log)
            assert [r.wrong for r in readers if r.wrong] == [], "run %d:\n%s" % (run, log)
            assert log.count("truncated since mount (size %d -> %d)"
                             % (len(image), tail_off + keep)) == 1, log
            assert read_all(d.path("kept.bin")) == KEPT
            assert direct_read(d.path("tail.bin"), 3 * CH, 0) == TAIL[:3 * CH]
            for off in (3 * CH, 4 * CH, len(TAIL) - CH):
                with pytest.raises(OSError) as ei:
                    direct_read(d.path("tail.bin"), CH, off)
                assert ei.value.errno == errno.EIO, os.strerror(ei.value.errno)
