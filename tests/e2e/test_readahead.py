"""Large sequential reads reach the daemon as large requests.

The daemon raises the mount's bdi read_ahead_kb to `readahead=` on the first
open (as root; CI runs as root), so the kernel's readahead sends 1 MiB
requests instead of 128-256 KiB ones. `io.read_requests` counts the requests
that reach the daemon, so bytes_served / read_requests is their mean size.
"""

import os

import apbformat
from conftest import KiB, MiB, mount, read_all

DATA = apbformat.random_bytes(32 * MiB, 31)


def bdi_read_ahead_kb(mnt):
    st = os.stat(mnt)
    path = "/sys/class/bdi/%d:%d/read_ahead_kb" % (os.major(st.st_dev), os.minor(st.st_dev))
    with open(path) as f:
        return int(f.read())


def test_first_open_raises_the_kernel_readahead(tmp_path, binaries):
    bundle = apbformat.write_v1(tmp_path / "ra.apbundle", [("m.bin", DATA)])
    with mount(bundle, {"readahead": "8M"}) as d:
        with open(d.path("m.bin"), "rb") as f:
            assert f.read(4096) == DATA[:4096]
        # one 1 MiB request ahead; the daemon prefetches the rest (ops.c)
        assert bdi_read_ahead_kb(d.mnt) == 1024


def test_sequential_reads_arrive_as_large_requests(tmp_path, binaries):
    bundle = apbformat.write_v1(tmp_path / "ra.apbundle", [("m.bin", DATA)])
    with mount(bundle, {"max_memory": "64M"}) as d:
        assert read_all(d.path("m.bin"), 128 * KiB) == DATA
        io = d.stats()["io"]
        # at least once each byte: this kernel's proactive reclaim (DAMON)
        # may drop a page the readahead brought in before it is read, and
        # the kernel then asks again
        assert io["bytes_served"] >= len(DATA)
        mean = io["bytes_served"] / io["read_requests"]
        # 128 KiB reads by the program; the kernel's readahead asks the
        # daemon for 1 MiB at a time once its window has grown (the first
        # few requests are smaller). Without the bdi change the mean is
        # about 256 KiB.
        assert mean >= 512 * KiB, "mean request %.0f KiB over %d requests" % (
            mean / KiB, io["read_requests"])
