"""LRU and LFU choose different victims on the same access sequence.

Cache of exactly three 64 KiB chunks; four one-chunk models A, B, C, D.
Sequence: A, A, A, B, C (cache full: A used 3 times but longest ago), then D.
LRU evicts A (least recently used); LFU evicts B (used once, and before C,
so it also loses the tie against C). Residency is first checked without
touching the cache (per-model resident_bytes), then by a read that must be
a hit (the survivor) and one that must be a miss (the victim).
"""

import pytest

import apbformat
from conftest import KiB, direct_read, mount

CH = 64 * KiB
NAMES = ["A", "B", "C", "D"]
DATA = {n: apbformat.random_bytes(CH, 100 + i) for i, n in enumerate(NAMES)}


def read_chunk(d, name):
    assert direct_read(d.path(name), CH, 0) == DATA[name], "bad bytes from " + name


def hits_misses(d):
    c = d.stats()["cache"]
    return c["hits"], c["misses"]


@pytest.mark.parametrize("policy,victim,survivor", [("lru", "A", "B"), ("lfu", "B", "A")])
def test_policy_chooses_victim(tmp_path, binaries, policy, victim, survivor):
    bundle = apbformat.write_v1(tmp_path / "p.apbundle", [(n, DATA[n]) for n in NAMES])
    opts = {"max_memory": "192K", "chunk_size": "64K", "eviction": policy,
            "prefetch": "off", "prefetch_count": "0"}  # the sequence alone decides
    with mount(bundle, opts) as d:
        assert d.stats()["cache"]["policy"] == policy
        for n in ["A", "A", "A", "B", "C"]:
            read_chunk(d, n)
        s = d.stats()
        assert (s["cache"]["hits"], s["cache"]["misses"]) == (2, 3)
        assert s["cache"]["resident_chunks"] == 3 and s["cache"]["evictions"] == 0

        read_chunk(d, "D")
        s = d.stats()
        c, models = s["cache"], s["models"]
        assert (c["hits"], c["misses"], c["evictions"]) == (2, 4, 1)
        assert c["resident_chunks"] == 3
        assert c["memory_used"] == 3 * CH <= c["memory_limit"]
        resident = {n for n in NAMES if models[n]["resident_bytes"] == CH}
        assert resident == set(NAMES) - {victim}, "%s kept %s" % (policy, sorted(resident))
        assert models[victim]["evictions"] == 1
        assert models[victim]["resident_bytes"] == 0

        h, m = hits_misses(d)
        read_chunk(d, survivor)
        assert hits_misses(d) == (h + 1, m), "%s: %s should still be resident" % (policy, survivor)
        read_chunk(d, victim)
        assert hits_misses(d) == (h + 1, m + 1), "%s: %s should have been evicted" % (policy, victim)
        assert d.stats()["cache"]["evictions"] == 2


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_memory_never_exceeds_budget_under_churn(tmp_path, binaries, policy):
    """Cycling through more chunks than fit: every read after the first 3 evicts."""
    bundle = apbformat.write_v1(tmp_path / "c.apbundle", [(n, DATA[n]) for n in NAMES])
    opts = {"max_memory": "192K", "chunk_size": "64K", "eviction": policy,
            "prefetch": "off", "prefetch_count": "0"}  # only reads load chunks
    with mount(bundle, opts) as d:
        for i in range(20):
            read_chunk(d, NAMES[i % 4])
            c = d.stats()["cache"]
            assert c["memory_used"] <= c["memory_limit"] == 192 * KiB
            assert c["resident_chunks"] == min(i + 1, 3)
        c = d.stats()["cache"]
        assert c["hits"] + c["misses"] == 20
        assert c["evictions"] == c["misses"] - 3
