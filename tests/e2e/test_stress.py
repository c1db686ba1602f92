"""Many readers, a tiny budget and every control command at once.

Eight reader threads (four O_DIRECT, four through the page cache) read
random ranges and short sequential runs of several models and reopen them
(which feeds model-to-model prefetch), while a control thread evicts,
clears, pins, unpins, prefetches and resets the counters and a sampler reads
.stats and .metrics. The budget is 24 chunks of 16 KiB: eight readers that
each hold up to ten chunks contend for the slots, and a pin takes all the
room pins may have. Every read is compared with the source bytes, sampled
memory_used never exceeds memory_limit, and the daemon must exit 0. Each
policy runs on a version 1 bundle and on a version 2 zstd one (checksums
and decompression on every page-in).

The work is a fixed number of operations, not a time: under ThreadSanitizer
(scripts/test.sh runs this file against the TSan build) the same
interleavings are exercised, only slower.
"""

import os
import random
import threading

import pytest

import apbformat
from conftest import KiB, mount, odirect_pread, open_direct, pack, write_sources

CHUNK = 16 * KiB
BUDGET_CHUNKS = 24


MODELS = {
    "a.bin": apbformat.random_bytes(1024 * KiB + 5, 71),
    "dir/b.bin": apbformat.compressible_bytes(640 * KiB - 3, 72),
    "c.bin": apbformat.compressible_bytes(2048 * KiB + 4097, 73),
    "small.bin": apbformat.random_bytes(100 * KiB + 1, 74),   # 7 chunks: pinnable
    "empty.bin": b"",
}
NAMES = sorted(MODELS)
PIN = "small.bin"
READERS = 8
OPS_PER_READER = 400
CONTROL_ROUNDS = 60
MAX_READ = 160 * KiB          # up to 11 chunks held by one read
OPTS = {"max_memory": "%dK" % (BUDGET_CHUNKS * CHUNK // KiB), "chunk_size": "16K",
        "prefetch": "on", "readahead": "256K", "prefetch_count": "2"}


# version 1; version 2 with zstd, whose 64 KiB blocks (raw where random,
# compressed elsewhere) each page-in of a 16 KiB cache chunk decodes
BUNDLES = {"v1": {"fmt": 1}, "v2-zstd": {"fmt": 2, "compress": "zstd:1"}}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("stress-src")
    write_sources(d, MODELS)
    return d


@pytest.fixture(scope="module", params=sorted(BUNDLES))
def stress_bundle(request, sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("stress") / ("%s.apbundle" % request.param)
    b = pack(out, sources, **BUNDLES[request.param])
    if BUNDLES[request.param].get("compress"):
        assert b.stat().st_size < sum(map(len, MODELS.values())) // 2
    return b


def reader(d, seed, direct, errors, counts):
    rng = random.Random(seed)
    fds = {}

    def fd_of(name):
        if name not in fds:
            p = d.path(name)
            fds[name] = open_direct(p) if direct else os.open(str(p), os.O_RDONLY)
        return fds[name]

    def check(name, off, length):
        fd = fd_of(name)
        got = odirect_pread(fd, length, off) if direct else os.pread(fd, length, off)
        want = MODELS[name][off:off + length]
        if got != want:
            errors.append("%s [%d, +%d) %s: %d bytes differ from the source (got %d)" % (
                name, off, length, "O_DIRECT" if direct else "buffered",
                sum(a != b for a, b in zip(got, want)) + abs(len(got) - len(want)), len(got)))

    try:
        for _ in range(OPS_PER_READER):
            name = rng.choice(NAMES)
            size = len(MODELS[name])
            op = rng.random()
            if op < 0.1:
                # a fresh open: model-to-model prefetch learns and fires
                if name in fds:
                    os.close(fds.pop(name))
                fd_of(name)
            elif op < 0.4:
                # a short sequential run, which prefetch follows
                off = rng.randrange(0, size + 1)
                step = rng.choice((4 * KiB, 32 * KiB, 128 * KiB))
                if direct:
                    off -= off % 4096
                for _ in range(4):
                    check(name, off, step)
                    off += step
            else:
                off = rng.randrange(0, size + CHUNK)   # sometimes past EOF
                if direct:
                    off -= off % 4096
                check(name, off, rng.randrange(1, MAX_READ))
            counts[seed] = counts.get(seed, 0) + 1
    except Exception as e:  # reported by the main thread
        errors.append("reader %d: %r" % (seed, e))
    finally:
        for fd in fds.values():
            os.close(fd)


def controller(d, errors):
    """Every .control command, in a fixed order, CONTROL_ROUNDS times."""
    names = [n for n in NAMES if n != PIN]
    try:
        for i in range(CONTROL_ROUNDS):
            d.control("evict %s" % names[i % len(names)])
            d.control("pin %s" % PIN)
            d.control("prefetch %s" % names[(i + 1) % len(names)])
            d.control("clear")
            d.control("unpin %s" % PIN)
            if i % 8 == 7:
                d.control("reset-stats")
    except Exception as e:
        errors.append("control: %r" % e)


def sampler(d, done, errors, samples):
    try:
        while not done.is_set():
            s = d.stats()
            c = s["cache"]
            samples.append((c["memory_used"], c["memory_limit"], c["evictions"],
                            s["prefetch"]["issued"]))
            if "apbundlefs_cache_memory_used_bytes" not in d.metrics():
                errors.append("sampler: .metrics lacks apbundlefs_cache_memory_used_bytes")
                return
    except Exception as e:
        errors.append("sampler: %r" % e)


@pytest.mark.parametrize("policy", ["lru", "lfu", "auto"])
def test_readers_control_and_stats_at_once(stress_bundle, binaries, policy):
    errors, samples, counts = [], [], {}
    done = threading.Event()
    with mount(stress_bundle, dict(OPTS, eviction=policy)) as d:
        workers = [threading.Thread(target=reader, args=(d, i, i % 2 == 0, errors, counts))
                   for i in range(READERS)]
        workers.append(threading.Thread(target=controller, args=(d, errors)))
        watch = threading.Thread(target=sampler, args=(d, done, errors, samples))
        watch.start()
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        done.set()
        watch.join()
        s = d.stats()
    assert not errors, "\n".join(errors[:20])
    assert sum(counts.values()) == READERS * OPS_PER_READER
    c = s["cache"]
    assert c["memory_limit"] == BUDGET_CHUNKS * CHUNK
    bad = [x for x in samples if x[0] > x[1]]
    assert samples and not bad, "memory_used above memory_limit in %d of %d samples: %r" % (
        len(bad), len(samples), bad[:5])
    assert c["memory_used"] <= c["memory_limit"]
    assert s["io"]["errors"] == 0 and s["io"]["checksum_errors"] == 0
    # the slots were contended and prefetch ran (reset-stats zeroes these
    # counters now and then, so the largest value seen counts)
    assert max([x[2] for x in samples] + [c["evictions"]]) > 0
    assert max([x[3] for x in samples] + [s["prefetch"]["issued"]]) > 0
