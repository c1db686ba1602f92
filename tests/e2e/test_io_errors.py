"""A backing-file I/O error fails only the read that hits it (docs/USAGE.md,
"The mounted tree").

The bundle file is truncated under a running mount: reads of chunks that
are gone must fail with EIO, be counted in io.errors (every read) and
logged with the model and chunk (once each); every other byte is still served, and no wrong byte is returned.
"""

import errno
import os

import pytest

import apbformat
from conftest import KiB, mount, odirect_pread, open_direct

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

