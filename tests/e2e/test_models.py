"""Whole-model behaviour: learned model-to-model prefetch, pinning, preload,
and access counts that survive a remount (state=, auto_preload=).

Waits poll .stats with a timeout (wait_until); nothing sleeps for a fixed
time.
"""

import errno
import json
import os
import random

import pytest

import apbformat
from conftest import (KiB, MiB, direct_read, mount, odirect_pread, open_direct,
                      run_daemon_expect_failure, source_of, wait_until)

A = apbformat.random_bytes(256 * KiB, 61)
B = apbformat.random_bytes(256 * KiB, 62)
C = apbformat.random_bytes(256 * KiB, 63)
PINNED = apbformat.random_bytes(2 * MiB, 64)
STORM = apbformat.random_bytes(32 * MiB, 65)
MODELS = [("a.bin", A), ("b.bin", B), ("c.bin", C), ("pinned.bin", PINNED), ("storm.bin", STORM)]
DATA = dict(MODELS)
CHUNK = 64 * KiB


@pytest.fixture
def bundle(tmp_path):
    return apbformat.write_v1(tmp_path / "models.apbundle", MODELS)


def model(d, name):
    return d.stats()["models"][name]


def read_whole(d, name):
    with open(d.path(name), "rb") as f:
        assert f.read() == DATA[name]


def check_direct_read(d, name, off, n):
    assert direct_read(d.path(name), n, off) == DATA[name][off:off + n]


def test_opening_a_prefetches_the_model_that_follows_it(bundle):
    with mount(bundle, {"max_memory": "16M", "prefetch": "off"}) as d:
        for _ in range(3):
            read_whole(d, "a.bin")
            read_whole(d, "b.bin")
        read_whole(d, "c.bin")  # a -> b three times, b -> c once
        d.control("clear")
        assert model(d, "b.bin")["resident_bytes"] == 0
        with open(d.path("a.bin"), "rb"):
            wait_until(lambda: model(d, "b.bin")["resident_bytes"] == len(B), 10,
                       what="b.bin prefetched after opening a.bin")
        assert model(d, "c.bin")["resident_bytes"] == 0
        assert model(d, "b.bin")["prefetch_issued"] == len(B) // CHUNK


def test_pinned_model_survives_a_random_read_storm(bundle):
    # 4 MiB = 64 chunks; pins must leave 16 chunks free, the pin takes 32
    with mount(bundle, {"max_memory": "4M", "pin": "pinned.bin", "prefetch": "off"}) as d:
        wait_until(lambda: model(d, "pinned.bin")["resident_bytes"] == len(PINNED), 10,
                   what="pinned.bin loaded")
        assert model(d, "pinned.bin")["pinned"] is True
        assert d.stats()["cache"]["pinned_bytes"] == len(PINNED)
        rng = random.Random(7)
        fd = open_direct(d.path("storm.bin"))
        try:
            for _ in range(400):
                off = rng.randrange(0, len(STORM) // CHUNK) * CHUNK
                assert odirect_pread(fd, 4 * KiB, off) == STORM[off:off + 4 * KiB]
        finally:
            os.close(fd)
        assert d.stats()["cache"]["evictions"] > 0
        m = model(d, "pinned.bin")
        assert m["resident_bytes"] == len(PINNED) and m["evictions"] == 0
        before = model(d, "pinned.bin")
        check_direct_read(d, "pinned.bin", 0, len(PINNED))
        after = model(d, "pinned.bin")
        assert after["hits"] - before["hits"] == len(PINNED) // CHUNK
        assert after["misses"] == before["misses"]
        d.control("clear")
        assert model(d, "pinned.bin")["resident_bytes"] == len(PINNED)
        d.control("unpin pinned.bin")
        assert model(d, "pinned.bin")["pinned"] is False
        d.control("evict pinned.bin")
        assert model(d, "pinned.bin")["resident_bytes"] == 0


def test_pins_over_the_budget_are_refused(bundle, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, err, mounted = run_daemon_expect_failure(bundle, mnt,
                                                 {"max_memory": "2M", "pin": "pinned.bin"})
    assert rc == 1 and not mounted
    assert err.startswith("apbundlefs: %s: pin: " % source_of(bundle)) and "max_memory" in err, err
    with mount(bundle, {"max_memory": "2M"}) as d:
        with pytest.raises(OSError) as e:
            d.control("pin pinned.bin")
        assert e.value.errno == errno.ENOSPC
        assert model(d, "pinned.bin")["pinned"] is False
        d.control("pin a.bin")
        assert model(d, "a.bin")["pinned"] is True
        with pytest.raises(OSError) as e:
            d.control("pin nosuch.bin")
        assert e.value.errno == errno.EINVAL


def test_preload_makes_the_first_read_a_hit(bundle):
    with mount(bundle, {"max_memory": "16M", "preload": "a.bin:c.bin"}) as d:
        for name in ("a.bin", "c.bin"):
            wait_until(lambda: model(d, name)["resident_bytes"] == len(DATA[name]), 10,
                       what="%s preloaded" % name)
        check_direct_read(d, "a.bin", 0, 4 * KiB)
        a = model(d, "a.bin")
        assert (a["hits"], a["misses"]) == (1, 0)
        assert model(d, "b.bin")["resident_bytes"] == 0


def test_access_counts_survive_a_remount(bundle, tmp_path):
    state = tmp_path / "state.json"
    with mount(bundle, {"max_memory": "16M", "state": str(state), "prefetch": "off"}) as d:
        for _ in range(3):
            read_whole(d, "c.bin")
        read_whole(d, "a.bin")
    saved = json.loads(state.read_text())
    assert saved["models"]["c.bin"]["opens"] == 3
    assert saved["models"]["a.bin"]["opens"] == 1
    with mount(bundle, {"max_memory": "16M", "state": str(state), "auto_preload": "1"}) as d:
        wait_until(lambda: model(d, "c.bin")["resident_bytes"] == len(C), 10,
                   what="c.bin auto-preloaded")
        assert model(d, "a.bin")["resident_bytes"] == 0
        read_whole(d, "c.bin")
    assert json.loads(state.read_text())["models"]["c.bin"]["opens"] == 4
