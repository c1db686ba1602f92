"""Learned load order (docs/USAGE.md, "Learned load order"): with state=,
the order in which a model's chunks are first read is saved at unmount and
replayed through the prefetcher, ahead of the reader, at the model's next
open.

The reader here reads a model chunk by chunk in a fixed shuffled order,
with O_DIRECT and chunk-aligned reads, so that each read reaches the daemon
as exactly one request for one chunk and the kernel's readahead adds none.
With APB_E2E_SOURCE=nginx (or rgw) the same tests run on a bundle served
over HTTP (conftest).
"""

import json
import os
import random

import pytest

import apbformat
from conftest import KiB, MiB, mount, odirect_pread, open_direct, wait_until
from test_state_files import assert_refused

CHUNK = 64 * KiB
N = 48                                   # chunks of m.bin
MODEL = apbformat.random_bytes(N * CHUNK, 161)
OTHER = apbformat.random_bytes(4 * CHUNK, 162)
ORDER = random.Random(163).sample(range(N), N)
WINDOW = 4                               # readahead=256K in 64K chunks
# 2 MiB: 32 slots, so the model (48 chunks) does not fit and the later
# reads evict earlier chunks; the prefetch share is 16 slots, more than a
# window, so no order prefetch is refused for room.
OPTS = {"max_memory": "2M", "chunk_size": "64K", "readahead": "256K"}
WAIT_S = 30.0


def runs_of(order):
    """The runs [first, count] the daemon records for chunks first read in
    this order: a chunk that follows the last run's end extends it."""
    runs = []
    for c in order:
        if runs and runs[-1][0] + runs[-1][1] == c:
            runs[-1][1] += 1
        else:
            runs.append([c, 1])
    return runs


@pytest.fixture
def bundle(tmp_path):
    path = tmp_path / "o.apbundle"
    apbformat.write_v2(path, [("m.bin", MODEL), ("other.bin", OTHER)])
    return path


def read_chunks(d, order, each=None):
    """Open m.bin once and read the chunks in order, checking every byte;
    each(i) runs before the i-th read."""
    fd = open_direct(d.path("m.bin"))
    try:
        for i, c in enumerate(order):
            if each:
                each(i)
            got = odirect_pread(fd, CHUNK, c * CHUNK)
            assert got == MODEL[c * CHUNK:(c + 1) * CHUNK], "chunk %d: wrong bytes" % c
    finally:
        os.close(fd)


def model_stats(d):
    return d.stats()["models"]["m.bin"]


def record(bundle, state, order=ORDER, opts=OPTS):
    with mount(bundle, dict(opts, state=state)) as d:
        read_chunks(d, order)
        p = d.stats()["prefetch"]
        assert p["order_chunks"] == 0 and p["order_hits"] == 0, p  # nothing learned yet


def saved_order(state):
    return json.loads(state.read_text())["models"]["m.bin"].get("order")


def test_first_mount_records_the_order_of_first_reads(bundle, tmp_path):
    state = tmp_path / "state.json"
    # Re-reads of chunks already read add nothing to the order.
    record(bundle, state, ORDER + ORDER[:5])
    assert saved_order(state) == {"chunk_size": CHUNK, "size": len(MODEL),
                                  "runs": runs_of(ORDER)}
    doc = json.loads(state.read_text())
    assert doc["version"] == 1 and doc["models"]["m.bin"]["opens"] == 1
    assert "order" not in doc["models"].get("other.bin", {})


def test_second_mount_reads_hit_chunks_prefetched_in_the_learned_order(bundle, tmp_path):
    """Lockstep: before each read, wait until the replay's prefetches of
    the positions handed out so far have been loaded (or are loading:
    prefetch_issued counts a load when it starts, and a read that finds a
    chunk loading counts a hit). The replay hands out WINDOW positions at
    open and one more after each read, so before the i-th read exactly
    min(i + WINDOW, N) chunks have been prefetched - no more (sequential
    readahead adds nothing to reads the order covers), no fewer. Then
    every read is a hit, and every chunk is loaded once."""
    state = tmp_path / "state.json"
    record(bundle, state)
    with mount(bundle, dict(OPTS, state=state)) as d:
        def settle(i):
            want = min(i + WINDOW, N)
            wait_until(lambda: model_stats(d)["prefetch_issued"] >= want, WAIT_S,
                       what="%d chunks prefetched before read %d" % (want, i))
            s = d.stats()
            assert s["models"]["m.bin"]["prefetch_issued"] == want, s["models"]["m.bin"]
            assert s["cache"]["memory_used"] <= s["cache"]["memory_limit"], s["cache"]

        read_chunks(d, ORDER, settle)
        s = d.stats()
    m, p, c = s["models"]["m.bin"], s["prefetch"], s["cache"]
    assert (m["hits"], m["misses"], m["prefetch_hits"]) == (N, 0, N), m
    assert (p["order_chunks"], p["order_hits"], p["order_stopped"]) == (N, N, 0), p
    assert p["issued"] == N and p["wasted"] == 0, p
    assert s["io"]["backing_bytes_read"] == len(MODEL), s["io"]
    assert c["memory_used"] <= c["memory_limit"] == 2 * MiB
    # The second run recorded the same order again.
    assert saved_order(state)["runs"] == runs_of(ORDER)


def test_evict_drops_chunks_not_the_replay(bundle, tmp_path):
    """Lockstep up to read EVICT_AT, then `evict m.bin`, then the rest at
    full speed: evict drops the WINDOW chunks the replay had loaded ahead,
    not the order or the replay. Those WINDOW chunks were handed out once
    and are read on demand (at least WINDOW misses); the replay goes on
    handing out the rest, so every first read is still of a chunk it had
    queued. (The evicted unread prefetches may shrink the window through
    the prefetch backoff, by timing: the counts below hold for any
    window.)"""
    evict_at = N // 2
    state = tmp_path / "state.json"
    record(bundle, state)
    with mount(bundle, dict(OPTS, state=state)) as d:
        def settle(i):
            if i <= evict_at:
                want = i + WINDOW
                wait_until(lambda: model_stats(d)["prefetch_issued"] >= want, WAIT_S,
                           what="%d chunks prefetched before read %d" % (want, i))
            if i == evict_at:
                d.control("evict m.bin")

        read_chunks(d, ORDER, settle)
        s = d.stats()
    m, p = s["models"]["m.bin"], s["prefetch"]
    assert m["hits"] >= evict_at and m["misses"] >= WINDOW, m
    assert m["prefetch_wasted"] >= WINDOW, m
    assert (p["order_chunks"], p["order_hits"], p["order_stopped"]) == (N, N, 0), p
    assert s["cache"]["memory_used"] <= s["cache"]["memory_limit"]


def test_replay_keeps_ahead_of_a_reader_at_full_speed(bundle, tmp_path):
    """Without waiting, whether a read finds its chunk loaded is timing;
    what the replay hands out is not: positions are handed out in the read
    handler before the demand read, a window ahead, so every first read
    (one reader, in the learned order) is of a chunk already handed out."""
    state = tmp_path / "state.json"
    record(bundle, state)
    with mount(bundle, dict(OPTS, state=state)) as d:
        read_chunks(d, ORDER)
        s = d.stats()
    p = s["prefetch"]
    assert (p["order_chunks"], p["order_hits"], p["order_stopped"]) == (N, N, 0), p
    assert s["cache"]["memory_used"] <= s["cache"]["memory_limit"]


def test_a_reader_that_leaves_the_order_stops_the_replay(bundle, tmp_path):
    """The first run reads half the model; the second reads the other half
    only: after max(16, WINDOW) first reads outside the learned order in a
    row the replay stops (one stop), having queued the first window plus
    nothing more (reads outside the order move no position). Its own
    recording, as many chunks as the learned one, replaces it."""
    state = tmp_path / "state.json"
    first, second = ORDER[:N // 2], ORDER[N // 2:]
    record(bundle, state, first)
    with mount(bundle, dict(OPTS, state=state)) as d:
        read_chunks(d, second)
        p = d.stats()["prefetch"]
    assert (p["order_chunks"], p["order_hits"], p["order_stopped"]) == (WINDOW, 0, 1), p
    assert saved_order(state)["runs"] == runs_of(second)


def test_a_short_run_does_not_replace_a_complete_order(bundle, tmp_path):
    """A probe that reads one chunk (a header) after a run that loaded the
    model keeps the learned order: a recording replaces it only with at
    least half its chunks."""
    state = tmp_path / "state.json"
    record(bundle, state)
    with mount(bundle, dict(OPTS, state=state)) as d:
        read_chunks(d, [0])
    assert saved_order(state)["runs"] == runs_of(ORDER)
    with mount(bundle, dict(OPTS, state=state)) as d:
        read_chunks(d, ORDER[:N // 2])
    assert saved_order(state)["runs"] == runs_of(ORDER[:N // 2])


def test_overlapping_opens_share_one_recording(bundle, tmp_path):
    """Two files of one model open at once: the first reads of both, in
    the order they happen, make one order, saved when the last closes."""
    state = tmp_path / "state.json"
    with mount(bundle, dict(OPTS, state=state)) as d:
        a, b = open_direct(d.path("m.bin")), open_direct(d.path("m.bin"))
        try:
            for i, c in enumerate(ORDER[:10]):
                assert odirect_pread(a if i % 2 else b, CHUNK, c * CHUNK) == \
                    MODEL[c * CHUNK:(c + 1) * CHUNK]
        finally:
            os.close(a)
            os.close(b)
    assert saved_order(state)["runs"] == runs_of(ORDER[:10])


def test_learn_order_0_neither_records_nor_replays_but_keeps_the_order(bundle, tmp_path):
    state = tmp_path / "state.json"
    record(bundle, state)
    with mount(bundle, dict(OPTS, state=state, learn_order=0)) as d:
        read_chunks(d, list(range(N)))
        assert d.stats()["prefetch"]["order_chunks"] == 0
    assert saved_order(state)["runs"] == runs_of(ORDER)


def test_an_order_of_another_chunk_size_is_dropped(bundle, tmp_path):
    """Its chunk numbers would name other bytes."""
    state = tmp_path / "state.json"
    record(bundle, state)
    with mount(bundle, dict(OPTS, state=state, chunk_size="128K")) as d:
        fd = open_direct(d.path("m.bin"))
        os.close(fd)
        assert d.stats()["prefetch"]["order_chunks"] == 0
    assert saved_order(state) is None


def test_an_old_state_file_without_orders_loads_and_gains_one(bundle, tmp_path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"version": 1, "models": {
        "m.bin": {"opens": 3, "next": {"other.bin": 2}}}}))
    record(bundle, state)
    m = json.loads(state.read_text())["models"]["m.bin"]
    assert m["opens"] == 4 and m["next"] == {"other.bin": 2}
    assert m["order"]["runs"] == runs_of(ORDER)


def test_metrics_carry_the_order_counters(bundle, tmp_path):
    state = tmp_path / "state.json"
    record(bundle, state)
    with mount(bundle, dict(OPTS, state=state)) as d:
        read_chunks(d, ORDER)
        text = d.metrics()
        d.control("reset-stats")
        p = d.stats()["prefetch"]
    assert "apbundlefs_prefetch_order_chunks_total %d\n" % N in text
    assert "apbundlefs_prefetch_order_hits_total %d\n" % N in text
    assert "apbundlefs_prefetch_order_stopped_total 0\n" in text
    assert (p["order_chunks"], p["order_hits"], p["order_stopped"]) == (0, 0, 0)


def _order(runs, size=len(MODEL), chunk_size=CHUNK):
    return {"chunk_size": chunk_size, "size": size, "runs": runs}


@pytest.mark.parametrize("order, reason", [
    ("x", "'models.m.bin.order' is not an object"),
    ({"size": 1, "runs": []}, "'models.m.bin.order.chunk_size' is missing"),
    (_order([[0, 0]]), "'models.m.bin.order.runs[0]' is not [FIRST, COUNT]"),
    (_order([[0, 1], [1, 2, 3]]), "'models.m.bin.order.runs[1]' is not [FIRST, COUNT]"),
    (_order([[0, -1]]), "'models.m.bin.order.runs[0]' is not [FIRST, COUNT]"),
    (_order([[N - 1, 2]]), "'models.m.bin.order.runs' names a chunk past"),
    (_order([[3, 2], [4, 1]]), "names a chunk past the model's size, a chunk twice"),
    (_order([[0, 4096], [5000, 1]], size=8192 * CHUNK), "names a chunk past"),
    (_order("all"), "'models.m.bin.order.runs' is missing or not an array"),
])
def test_a_corrupt_order_refuses_the_mount_and_keeps_the_file(bundle, tmp_path, order, reason):
    state = tmp_path / "state.json"
    text = json.dumps({"version": 1, "models": {"m.bin": {"opens": 1, "next": {},
                                                          "order": order}}})
    state.write_text(text)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert_refused(bundle, mnt, {"state": state},
                   "state=%s: not an apbundlefs state file: " % state, reason)
    assert state.read_text() == text
