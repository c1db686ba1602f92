"""Sequential-read prefetch: a scan is served from chunks loaded ahead of it,
random reads load nothing extra, and concurrent scans stay byte-exact within
the budget.

Counting (docs/USAGE.md, ".stats"): a read counts a hit for a chunk that
was resident or being loaded by prefetch; prefetch.issued counts chunks
loaded ahead, prefetch.hits those a read then used, prefetch.wasted those
evicted unread.
"""

import os
import random
import threading

import apbformat
from conftest import KiB, MiB, mount, odirect_pread, open_direct, read_all, wait_until

SCAN = apbformat.random_bytes(64 * MiB, 41)
CHUNK = 64 * KiB


def test_sequential_scan_is_served_by_prefetch(tmp_path, binaries):
    """A reader that scans in 1 MiB O_DIRECT reads and, between reads, lets
    the daemon load its next read (it waits until the bundle bytes read
    reach the next read's end: only prefetch can take them there): every
    chunk after the first read is a hit that prefetch loaded. Without the pause the
    share of hits depends on whether the prefetch workers get the CPU before
    the reader's next request (the speed of it is scripts/bench-prefetch.py's
    to measure, not a test's)."""
    bundle = apbformat.write_v1(tmp_path / "scan.apbundle", [("m.bin", SCAN)])
    step = MiB
    # budget 8 x readahead (the issue asks for at least 4 x)
    with mount(bundle, {"max_memory": "32M", "readahead": "4M"}) as d:
        fd = open_direct(d.path("m.bin"))
        got = []
        try:
            for pos in range(0, len(SCAN), step):
                got.append(odirect_pread(fd, step, pos))
                ahead = min(len(SCAN), pos + 2 * step)
                wait_until(lambda: d.stats()["io"]["backing_bytes_read"] >= ahead, 10,
                           what="prefetch to load up to byte %d" % ahead)
        finally:
            os.close(fd)
        assert b"".join(got) == SCAN
        s = d.stats()
    c, p = s["cache"], s["prefetch"]
    first = step // CHUNK     # the first read's chunks: nothing was ahead of it
    assert c["misses"] == first, (c, p)
    assert c["hits"] == len(SCAN) // CHUNK - first, (c, p)
    assert p["hits"] == c["hits"], p        # each of them one that prefetch loaded
    assert p["issued"] == p["hits"] + p["wasted"] + p["unused_chunks"], p
    assert p["wasted"] == 0 and p["unused_chunks"] == 0, p
    assert s["io"]["backing_bytes_read"] == len(SCAN), s["io"]
    assert p["reads_random"] == 0 and p["reads_sequential"] == len(SCAN) // step, p


def test_prefetch_off_loads_nothing_ahead(tmp_path, binaries):
    bundle = apbformat.write_v1(tmp_path / "scan.apbundle", [("m.bin", SCAN)])
    with mount(bundle, {"max_memory": "32M", "prefetch": "off"}) as d:
        # O_DIRECT, chunk-aligned: the kernel's own readahead would send
        # concurrent requests that may share a chunk (one hit or two
        # misses, by timing); these touch each chunk exactly once.
        fd = open_direct(d.path("m.bin"))
        try:
            for off in range(0, len(SCAN), MiB):
                assert odirect_pread(fd, MiB, off) == SCAN[off:off + MiB]
        finally:
            os.close(fd)
        s = d.stats()
    assert s["prefetch"]["issued"] == 0
    assert s["cache"]["hits"] == 0 and s["cache"]["misses"] == len(SCAN) // CHUNK


def test_random_4k_reads_trigger_no_prefetch(tmp_path, binaries):
    """4 KiB O_DIRECT reads, never at offset 0, each in a different MiB and
    at most 512 KiB into it, so no two are within a stream's gap."""
    bundle = apbformat.write_v1(tmp_path / "scan.apbundle", [("m.bin", SCAN)])
    rng = random.Random(5)
    slots = list(range(1, 64))
    rng.shuffle(slots)
    offsets = [m * MiB + rng.randrange(0, 128) * 4 * KiB for m in slots]
    with mount(bundle, {"max_memory": "32M"}) as d:
        fd = open_direct(d.path("m.bin"))
        try:
            for off in offsets:
                assert odirect_pread(fd, 4 * KiB, off) == SCAN[off:off + 4 * KiB]
        finally:
            os.close(fd)
        s = d.stats()
    assert s["prefetch"]["issued"] == 0
    assert s["prefetch"]["reads_random"] == len(offsets)
    assert s["prefetch"]["reads_sequential"] == 0
    assert s["cache"]["misses"] == len(offsets)


def test_concurrent_scans_are_exact_and_within_budget(tmp_path, binaries):
    models = [("m%d.bin" % i, apbformat.random_bytes(24 * MiB, 50 + i)) for i in range(4)]
    bundle = apbformat.write_v1(tmp_path / "many.apbundle", models)
    errors, samples = [], []
    with mount(bundle, {"max_memory": "8M", "readahead": "1M"}) as d:
        def reader(name, data):
            try:
                for bufsize in (MiB, 128 * KiB):
                    got = read_all(d.path(name), bufsize)
                    if apbformat.xxh3_64(got) != apbformat.xxh3_64(data):
                        errors.append("%s: bytes differ" % name)
            except Exception as e:  # reported by the main thread
                errors.append("%s: %r" % (name, e))

        threads = [threading.Thread(target=reader, args=m) for m in models]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            c = d.stats()["cache"]
            samples.append((c["memory_used"], c["memory_limit"]))
        for t in threads:
            t.join(120)
        s = d.stats()
    assert not errors, errors
    assert samples and all(used <= limit for used, limit in samples)
    assert s["prefetch"]["issued"] > 0
    assert s["io"]["errors"] == 0
