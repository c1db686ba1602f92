"""-o trace=FILE: the records a mount writes (docs/FORMAT.md, "Trace files"),
the bound of trace_max, the paths refused, and apbreplay reproducing the
daemon's own counters from a trace.

The file is read here by an independent parser written from the format's
documentation. Reads use O_DIRECT at chosen offsets, each one FUSE read
of known chunks (test_stats.py); with prefetch=off and prefetch_count=0
nothing else touches the cache, so the records are exactly determined.
"""

import itertools
import json
import os
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

import apbformat
from conftest import BUILD, KiB, direct_read, mount, run_daemon_expect_failure, wait_until

APBREPLAY = BUILD / "tools" / "apbreplay"
TRACEGEN = Path(__file__).resolve().parents[2] / "scripts" / "tracegen.py"
CH = 64 * KiB
ALPHA = apbformat.random_bytes(8 * CH, 21)           # 8 chunks
BETA = apbformat.random_bytes(3 * CH + 100, 22)      # chunks 0-2, chunk 3 = 100 bytes
BIG = apbformat.random_bytes(64 * CH, 23)            # 4 MiB
MODELS = [("alpha.bin", ALPHA), ("beta.bin", BETA), ("big.bin", BIG)]
QUIET = {"chunk_size": "64K", "eviction": "lru", "prefetch": "off", "prefetch_count": "0"}
DEMAND, PREFETCH = 0, 1
F_COMPLETE, F_NAMES, F_FULL, F_WRITE_ERROR = 1, 2, 4, 8


def parse_trace(path):
    """The header, the models [(name, size)] and the records
    [(time_ns, model, chunk, count, kind)] of a trace file."""
    b = open(path, "rb").read()
    assert b[:8] == b"APBTRACE"
    (version, header_bytes, record_bytes, chunk_size, model_count, flags, records,
     dropped, max_bytes, start_ns) = struct.unpack_from("<IIIIIIQQQQ", b, 8)
    assert (version, record_bytes) == (1, 16)
    assert header_bytes % 16 == 0
    models, at = [], 64
    for _ in range(model_count):
        size, name_len = struct.unpack_from("<QI", b, at)
        models.append((b[at + 12:at + 12 + name_len].decode(), size))
        at += (12 + name_len + 7) // 8 * 8
    assert at <= header_bytes
    assert b[at:header_bytes] == bytes(header_bytes - at)
    assert len(b) == header_bytes + 16 * records, "file length against the record count"
    recs = []
    for off in range(header_bytes, len(b), 16):
        w0, w1 = struct.unpack_from("<QQ", b, off)
        recs.append((w0 & (1 << 56) - 1, w1 >> 44, w1 & (1 << 44) - 1, (w0 >> 56) & 0x7f,
                     w0 >> 63))
    header = dict(version=version, header_bytes=header_bytes, chunk_size=chunk_size,
                  flags=flags, records=records, dropped=dropped, max_bytes=max_bytes,
                  start_ns=start_ns)
    return header, models, recs


@pytest.fixture
def bundle(tmp_path, binaries):
    return apbformat.write_v1(tmp_path / "t.apbundle", MODELS)


def apbreplay(*args):
    """Run apbreplay; CompletedProcess with text stdout and stderr."""
    return subprocess.run([str(APBREPLAY)] + [str(a) for a in args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def read_chunks(d, name, first, n):
    data = dict(MODELS)[name]
    got = direct_read(d.path(name), n * CH, first * CH)
    assert got == data[first * CH:(first + n) * CH]


def test_records_are_the_reads_exactly(bundle, tmp_path):
    path = tmp_path / "t.trace"
    before = time.time_ns()
    with mount(bundle, dict(QUIET, max_memory="8M", trace=path)) as d:
        read_chunks(d, "alpha.bin", 0, 1)
        read_chunks(d, "alpha.bin", 3, 1)
        read_chunks(d, "beta.bin", 1, 3)       # chunks 1, 2 and the short 3
        read_chunks(d, "alpha.bin", 0, 1)
        assert path.stat().st_size < 4096, "64 KiB buffers: nothing written before unmount"
    h, models, recs = parse_trace(path)
    assert models == [(n, len(data)) for n, data in MODELS]
    index = {name: i for i, (name, _) in enumerate(models)}
    a, b = index["alpha.bin"], index["beta.bin"]
    assert [r[1:] for r in recs] == [(a, 0, 1, DEMAND), (a, 3, 1, DEMAND), (b, 1, 1, DEMAND),
                                     (b, 2, 1, DEMAND), (b, 3, 1, DEMAND), (a, 0, 1, DEMAND)]
    times = [r[0] for r in recs]
    assert times == sorted(times) and times[-1] < 60 * 10**9
    assert h["chunk_size"] == CH
    assert h["flags"] == F_COMPLETE | F_NAMES
    assert (h["records"], h["dropped"], h["max_bytes"]) == (6, 0, 1 << 30)
    assert before - 10**9 <= h["start_ns"] <= time.time_ns()


def test_model_table_over_two_buffers(tmp_path, binaries):
    """A model table larger than the writer's 64 KiB buffer, made so that
    the second buffer's entries fill it to its last byte and the table ends
    8 bytes short of a multiple of 16: one 24-byte entry, then 8190 of 16.
    The writer once put the 8 bytes of padding past its buffer (ASan in the
    asan stage); the header must hold every model, in order, padded."""
    alnum = "0123456789abcdefghijklmnopqrstuvwxyz"
    short = ("".join(t) for t in itertools.product("abcdefghij", alnum, alnum))
    names = ["0long-name"] + list(itertools.islice(short, 8190))
    models = [(n, bytes([i % 256])) for i, n in enumerate(names)]
    bundle = apbformat.write_v1(tmp_path / "many.apbundle", models)
    path = tmp_path / "t.trace"
    with mount(bundle, dict(QUIET, trace=path)) as d:
        assert direct_read(d.path("a00"), 4096, 0) == bytes([1])
    h, got, recs = parse_trace(path)
    assert h["header_bytes"] == 131136  # 64 + 24 + 8190 * 16, padded to 16
    assert got == sorted((n, 1) for n in names)
    assert [r[1:] for r in recs] == [(1, 0, 1, DEMAND)]


def test_prefetch_records(bundle, tmp_path):
    """A 1 MiB read at offset 0 starts a stream whose readahead (a window
    of the read's 16 chunks) is one job: chunks 16-31, one prefetch run."""
    path = tmp_path / "t.trace"
    with mount(bundle, dict(QUIET, prefetch="on", max_memory="8M", readahead="4M",
                            trace=path)) as d:
        read_chunks(d, "big.bin", 0, 16)
        wait_until(lambda: d.stats()["prefetch"]["issued"] == 16, 10,
                   what="the prefetch of chunks 16-31")
    _, models, recs = parse_trace(path)
    big = [n for n, _ in models].index("big.bin")
    assert sorted(r[1:] for r in recs if r[4] == DEMAND) == [(big, c, 1, DEMAND)
                                                              for c in range(16)]
    assert [r[1:] for r in recs if r[4] == PREFETCH] == [(big, 16, 16, PREFETCH)]


def test_trace_max_bounds_the_file(bundle, tmp_path):
    """4 KiB: a header of 144 bytes (three models with their names) leaves
    room for 247 records; the other 73 of the 320 reads count as dropped."""
    path = tmp_path / "t.trace"
    with mount(bundle, dict(QUIET, max_memory="8M", trace=path, trace_max="4K")) as d:
        for _ in range(40):
            for c in range(8):
                read_chunks(d, "alpha.bin", c, 1)
        assert d.stats()["cache"]["hits"] + d.stats()["cache"]["misses"] == 320
    h, _, recs = parse_trace(path)
    assert h["header_bytes"] == 144
    assert path.stat().st_size == 144 + 247 * 16 <= 4096
    assert (h["records"], h["dropped"], len(recs)) == (247, 73, 247)
    assert h["flags"] == F_COMPLETE | F_NAMES | F_FULL
    log = d.log()
    assert log.count("reached trace_max") == 1, log
    assert "247 records, 73 accesses not recorded" in log


def test_concurrent_readers_every_get_recorded(bundle, tmp_path):
    """Four threads read at once through a small budget: one demand record
    per get the cache counted, in time order."""
    path = tmp_path / "t.trace"
    errors = []

    def reader(seed):
        try:
            for i in range(200):
                c = (seed * 7 + i * 5) % 64
                read_chunks(d, "big.bin", c, 1 + i % 2 if c < 63 else 1)
        except Exception as e:                   # noqa: BLE001 - reported below
            errors.append(e)

    with mount(bundle, dict(QUIET, max_memory="1M", trace=path)) as d:
        threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        c = d.stats()["cache"]
    assert not errors, errors
    h, _, recs = parse_trace(path)
    assert h["dropped"] == 0 and h["records"] == len(recs) == c["hits"] + c["misses"]
    assert all(r[4] == DEMAND and r[3] == 1 for r in recs)
    times = [r[0] for r in recs]
    assert times == sorted(times)


def test_readers_prefetch_and_clear_fill_the_bound(bundle, tmp_path):
    """Eight readers with readahead, and .control clear, through a 1 MiB
    budget until a 192 KiB trace is full (about 12,000 records: both
    buffers written, then the bound): the file stays within the bound,
    records are in time order, and every counted get is in the file or
    dropped.
    (Run by CI under ThreadSanitizer too, with test_stress.py.)"""
    path = tmp_path / "t.trace"
    halt, errors = threading.Event(), []

    def reader(k):
        name, data = MODELS[k % 3]
        try:
            while not halt.is_set():
                with open(d.path(name), "rb", buffering=0) as f:
                    assert f.read() == data
        except Exception as e:                   # noqa: BLE001 - reported below
            errors.append(e)

    opts = dict(QUIET, prefetch="on", max_memory="1M", trace=path, trace_max="192K")
    with mount(bundle, opts) as d:
        threads = [threading.Thread(target=reader, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: errors or "reached trace_max" in d.log(), 120, interval=0.05,
                       what="the trace to fill")
            d.control("clear")
        finally:
            halt.set()
            for t in threads:
                t.join()
        c = d.stats()["cache"]
    assert not errors, errors
    h, _, recs = parse_trace(path)
    assert path.stat().st_size <= 192 * KiB
    assert h["flags"] & F_FULL and not h["flags"] & F_WRITE_ERROR
    assert h["records"] == (192 * KiB - h["header_bytes"]) // 16 == len(recs)
    # Every counted get left a demand record (or was dropped at the
    # bound); the prefetch runs are in it too (docs/FORMAT.md).
    demand = sum(1 for r in recs if r[4] == DEMAND)
    assert demand <= c["hits"] + c["misses"]
    assert h["records"] + h["dropped"] >= c["hits"] + c["misses"]
    times = [r[0] for r in recs]
    assert times == sorted(times)


def test_apbreplay_reproduces_the_daemons_counts(bundle, tmp_path):
    """Single-chunk reads, one at a time, prefetch off: replaying the trace
    under the mount's policy and budget gives the daemon's own hits,
    reuse hits, misses and bytes read."""
    path = tmp_path / "t.trace"
    with mount(bundle, dict(QUIET, max_memory="512K", trace=path)) as d:
        for c in list(range(12)) * 2 + [0, 1, 0, 1, 11, 10, 63, 62]:
            read_chunks(d, "big.bin", c, 1)
        for c in (0, 1, 2, 3, 3, 2):              # chunk 3: 100 bytes
            read_chunks(d, "beta.bin", c, 1)
        s = d.stats()
    p = apbreplay("--budget", "512K", "--json", path)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    lru = next(r for r in out["policies"] if r["policy"] == "lru")
    c = s["cache"]
    assert (lru["hits"], lru["reuse_hits"], lru["misses"]) == (c["hits"], c["reuse_hits"],
                                                               c["misses"])
    assert lru["read_bytes"] == s["io"]["backing_bytes_read"]
    opt = next(r for r in out["policies"] if r["policy"] == "OPT")
    assert lru["hits"] <= opt["hits"] and opt["demand"] == lru["demand"] == out["demand_records"]


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs: the trace's first 64 KiB buffer does not fit."""
    disk = tmp_path / "small"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_failed_write_stops_recording_not_reads(bundle, full_disk):
    """70 reads of 64 chunks: the first full buffer (4096 records) fails to
    write; recording stops with one log line, every read still succeeds,
    and the header says 0 records and 4480 accesses not recorded."""
    path = full_disk / "t.trace"
    with mount(bundle, dict(QUIET, max_memory="8M", trace=path)) as d:
        for _ in range(70):
            read_chunks(d, "big.bin", 0, 64)
        assert d.stats()["io"]["errors"] == 0
    h, _, recs = parse_trace(path)
    assert (h["records"], h["dropped"], recs) == (0, 4480, [])
    assert h["flags"] == F_COMPLETE | F_NAMES | F_WRITE_ERROR
    log = d.log()
    assert log.count("write failed: No space left on device; recording stops") == 1, log
    assert "0 records, 4480 accesses not recorded" in log


def test_refused_paths(bundle, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    cases = [
        (mnt / "t.trace", "trace=%s: lies inside the mountpoint" % (mnt / "t.trace")),
        (fifo, "trace=%s: is a FIFO; trace= writes a regular file of its own" % fifo),
        (link, "trace=%s: is a symbolic link" % link),
        (tmp_path, "trace=%s: is a directory" % tmp_path),
        (bundle, "trace=%s: is the bundle being mounted" % bundle),
    ]
    before = bundle.read_bytes()
    for path, message in cases:
        rc, log, mounted = run_daemon_expect_failure(bundle, mnt, dict(QUIET, trace=path))
        assert (rc, mounted) == (1, False), log
        assert message in log
    assert bundle.read_bytes() == before
    assert not (tmp_path / "elsewhere").exists()
    assert fifo.exists() and not os.path.isfile(fifo)

    rc, log, mounted = run_daemon_expect_failure(bundle, mnt, dict(QUIET, trace_max="4K"))
    assert (rc, mounted) == (2, False) and "trace_max needs trace=FILE" in log
    rc, log, mounted = run_daemon_expect_failure(
        bundle, mnt, dict(QUIET, trace=tmp_path / "t.trace", trace_max="100"))
    assert (rc, mounted) == (1, False)
    assert "trace_max=100 B is smaller than the trace header (112 bytes for 3 models)" in log


def test_apbreplay_names_a_corrupt_trace(bundle, tmp_path):
    path = tmp_path / "t.trace"
    with mount(bundle, dict(QUIET, max_memory="8M", trace=path)) as d:
        read_chunks(d, "alpha.bin", 0, 2)
    whole = path.read_bytes()
    path.write_bytes(whole[:-3])
    p = apbreplay("--budget", "1M", path)
    assert p.returncode == 1
    assert p.stderr == ("apbreplay: %s: truncated: the header says 2 records (32 bytes), "
                        "the file holds 29 bytes of records\n" % path)
    p = apbreplay(path)
    assert p.returncode == 2 and "--budget SIZE is required" in p.stderr


def lru_hits(keys, slots):
    cache, hits = {}, 0
    for k in keys:
        if k in cache:
            hits += 1
            del cache[k]
        elif len(cache) == slots:
            del cache[next(iter(cache))]
        cache[k] = True
    return hits


def opt_hits(keys, slots):
    """Belady, quadratic: fine for a few thousand accesses."""
    cache, hits = set(), 0
    for i, k in enumerate(keys):
        if k in cache:
            hits += 1
            continue
        if len(cache) == slots:
            rest = keys[i + 1:]
            cache.remove(max(cache, key=lambda c: rest.index(c) if c in rest else len(rest)))
        cache.add(k)
    return hits


@pytest.mark.parametrize("args", [["loop", "--ratio", "2", "--passes", "3"],
                                  ["loop", "--ratio", "1.25", "--prefetch", "on"],
                                  ["zipf", "--models", "20", "--model-max", "2M",
                                   "--requests", "200", "--prefetch", "on"],
                                  ["loopzipf", "--passes", "2"],
                                  ["recency", "--span", "4"],
                                  ["stream", "--prefetch", "on"]])
def test_tracegen_traces_replay_like_a_simple_simulator(tmp_path, args, binaries):
    """The reference generators write traces apbreplay reads, and its lru
    and OPT hits on their demand records are those of the plain
    simulators above (budget 1M: 16 slots)."""
    path = tmp_path / "g.trace"
    subprocess.run(["/usr/bin/python3", str(TRACEGEN)] + args +
                   ["--budget", "1M", "-o", str(path)], check=True, stderr=subprocess.DEVNULL)
    h, models, recs = parse_trace(path)
    assert h["flags"] == F_COMPLETE | F_NAMES and h["chunk_size"] == CH
    keys = [(r[1], r[2]) for r in recs if r[4] == DEMAND]
    assert ("--prefetch" in args) == any(r[4] == PREFETCH for r in recs)
    p = apbreplay("--budget", "1M", "--prefetch", "off", "--json", path)
    assert p.returncode == 0, p.stderr
    rows = {r["policy"]: r for r in json.loads(p.stdout)["policies"]}
    assert rows["lru"]["demand"] == rows["OPT"]["demand"] == len(keys)
    assert (rows["lru"]["hits"], rows["OPT"]["hits"]) == (lru_hits(keys, 16), opt_hits(keys, 16))
