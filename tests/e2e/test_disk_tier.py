"""The disk tier (-o cache_dir=, cache_dir_size=; core/disktier.c): bytes of
a bundle behind a URL kept in extent files under a local directory.

Every read is compared with the model's own bytes. Requests are counted by
the fault proxy in front of nginx (or RGW): a mount that starts warm sends
only its open request. The tier's counters in .stats are compared with
what the test can compute exactly: which 1 MiB extents of the bundle the
models' bytes cover, and the files on disk."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import apbformat
import remote
from conftest import (MiB, direct_read, mount, pack, read_all,
                      run_daemon_expect_failure, write_sources)

KiB = 1024
EXTENT = MiB
HEADER = 4096

MODELS = {
    "a.bin": apbformat.random_bytes(3 * MiB + 12345, 21),
    "b.bin": apbformat.random_bytes(700 * KiB + 3, 22),
    "dir/c.bin": apbformat.compressible_bytes(5000, 23),
}
OPTS = {"max_memory": "1M", "chunk_size": "64K"}


def file_bytes(length):
    return HEADER + (length + 4095) // 4096 * 4096


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("tier-bundles")
    src = write_sources(d / "src", MODELS)
    return pack(d / "t.apbundle", *["%s=%s" % (n, src[n]) for n in sorted(MODELS)], fmt=1)


@pytest.fixture(scope="module")
def bundle_v2(tmp_path_factory):
    """MODELS in format 2 with zstd blocks: page-ins of one frame each, at
    offsets no extent or page boundary lines up with."""
    d = tmp_path_factory.mktemp("tier-bundles-v2")
    src = write_sources(d / "src", MODELS)
    return pack(d / "t2z.apbundle", *["%s=%s" % (n, src[n]) for n in sorted(MODELS)],
                fmt=2, compress="zstd")


@pytest.fixture(scope="module")
def bundle2(tmp_path_factory):
    """The same names, other bytes: the object replaced on the server."""
    d = tmp_path_factory.mktemp("tier-bundles2")
    other = {n: apbformat.random_bytes(len(b) + 4096, 31 + i)
             for i, (n, b) in enumerate(sorted(MODELS.items()))}
    src = write_sources(d / "src", other)
    return pack(d / "t2.apbundle", *["%s=%s" % (n, src[n]) for n in sorted(other)],
                fmt=1), other


def layout(path):
    """{name: (offset, size)} of a v1 bundle's models."""
    return {m["name"]: (m["offset"], m["size"])
            for m in apbformat.read_v1_manifest(path)[3]["models"]}


def extents_of(path, names=None):
    """The extent indexes the models' bytes cover."""
    out = set()
    for name, (off, size) in layout(path).items():
        if (names is None or name in names) and size:
            out.update(range(off // EXTENT, (off + size - 1) // EXTENT + 1))
    return out


def extent_len(path, k):
    size = os.path.getsize(path)
    return min(EXTENT, size - k * EXTENT)


def tier_files(cache_dir):
    """{extent index: path} of every extent file under cache_dir."""
    out = {}
    for sub in Path(cache_dir).iterdir():
        if sub.is_dir():
            for f in sub.iterdir():
                if re.fullmatch(r"[0-9a-f]{16}", f.name):
                    out[int(f.name, 16)] = f
    return out


def serve(request, server, path, key):
    """remote.serve through a fault proxy that counts the requests, as
    s.proxy."""
    upstream = request.getfixturevalue("nginx_server" if server == "nginx" else "s3_env")
    proxy = request.getfixturevalue("fault_proxy")(upstream.endpoint)
    s = remote.serve(request, server, path, key, proxy.endpoint)
    s.proxy = proxy
    return s


def cache_opts(tmp_path, **more):
    """A fresh cache_dir under tmp_path, and mount options naming it with a
    64M bound and OPTS (and more)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    return cache, dict(cache_dir=str(cache), cache_dir_size="64M", **OPTS, **more)


def read_models(d, models=MODELS):
    for name, data in models.items():
        assert read_all(d.path(name)) == data, name


def ranges(proxy, since):
    return [q.range for q in list(proxy.requests)[since:]]


def tier(d):
    return d.stats()["disk_tier"]


# --------------------------------------------------------------------------
# bytes, and a second mount that starts warm


@pytest.mark.timeout_s(300)
@pytest.mark.parametrize("server", ["nginx", "rgw"])
def test_exact_bytes_then_warm_second_mount(request, bundle, tmp_path, server):
    s = serve(request, server, bundle, "warm-%s.apbundle" % server)
    cache, opts = cache_opts(tmp_path, **s.options)
    want = extents_of(bundle)
    written = sum(file_bytes(extent_len(bundle, k)) for k in want)
    with mount(s.url, opts) as d:
        read_models(d)
        t = tier(d)
        assert (t["misses"], t["errors"], t["evictions"]) == (len(want), 0, 0), t
        assert t["bytes_written"] == t["bytes_used"] == written
        assert t["capacity"] == 64 * MiB and t["writing"] is True
        m = d.metrics()
        assert "apbundlefs_disk_tier_misses_total %d\n" % len(want) in m
        assert "apbundlefs_disk_tier_used_bytes %d\n" % written in m
    files = tier_files(cache)
    assert sorted(files) == sorted(want)
    for k, f in files.items():
        assert f.stat().st_size == HEADER + extent_len(bundle, k)
        with open(bundle, "rb") as b:
            b.seek(k * EXTENT)
            assert f.read_bytes()[HEADER:] == b.read(extent_len(bundle, k)), k

    n0 = len(s.proxy.requests)
    with mount(s.url, opts) as d:
        read_models(d)
        for name, data in MODELS.items():
            for off in (0, len(data) // 2, len(data) - 1):
                assert direct_read(d.path(name), 1, off) == data[off:off + 1]
        t = tier(d)
        assert (t["misses"], t["errors"], t["bytes_written"]) == (0, 0, 0), t
        assert t["hits"] >= len(want) and t["bytes_used"] == written
        assert t["bytes_read"] >= sum(len(b) for b in MODELS.values())
    # the open's request and nothing else: no range GET for a cached extent
    assert len(s.proxy.requests) - n0 == 1, ranges(s.proxy, n0)
    assert s.proxy.requests[n0].range == "bytes=0-65535"


def test_object_replaced_never_serves_old_bytes(request, bundle, bundle2, tmp_path):
    s = serve(request, "nginx", bundle, "swap-tier.apbundle")
    cache, opts = cache_opts(tmp_path)
    with mount(s.url, opts) as d:
        read_models(d)
    old_dirs = sorted(p.name for p in cache.iterdir())
    assert len(old_dirs) == 1
    new_path, new_models = bundle2
    s.replace(new_path)
    want = extents_of(new_path)
    with mount(s.url, opts) as d:
        read_models(d, new_models)
        t = tier(d)
        assert (t["misses"], t["errors"]) == (len(want), 0), t
        assert t["bytes_used"] == sum(file_bytes(extent_len(new_path, k)) for k in want)
    assert "deleted the extents of 1 older version(s) of this URL" in d.log()
    dirs = sorted(p.name for p in cache.iterdir())
    assert len(dirs) == 1 and dirs != old_dirs
    assert dirs[0][:16] == old_dirs[0][:16]     # the same URL, another version


def test_v2_zstd_warm_second_mount(request, bundle_v2, tmp_path):
    s = serve(request, "nginx", bundle_v2, "warm-v2.apbundle")
    cache, opts = cache_opts(tmp_path)
    with mount(s.url, opts) as d:
        read_models(d)
        t = tier(d)
        assert t["errors"] == 0 and t["misses"] == len(tier_files(cache)), t
        assert d.stats()["io"]["checksum_errors"] == 0
    n0 = len(s.proxy.requests)
    with mount(s.url, opts) as d:
        read_models(d)
        t = tier(d)
        assert (t["misses"], t["errors"]) == (0, 0), t
        assert d.stats()["io"]["checksum_errors"] == 0
    assert len(s.proxy.requests) - n0 == 1, ranges(s.proxy, n0)


def test_s3_endpoint_from_the_profile_is_the_same_object(request, bundle, tmp_path,
                                                         monkeypatch):
    """The tier names an object by the URL the remote requests: an s3:// URL
    whose endpoint comes from the AWS profile (endpoint_url) is the same
    object as with -o s3_endpoint=, so a mount that names the endpoint the
    other way starts warm (and does not take it for another object)."""
    s = serve(request, "rgw", bundle, "profile-tier.apbundle")
    cache, opts = cache_opts(tmp_path, **s.options)
    with mount(s.url, opts) as d:
        read_models(d)
    conf = tmp_path / "aws-config"
    conf.write_text("[default]\nregion = %s\nendpoint_url = %s\n"
                    % (s.options["s3_region"], s.options["s3_endpoint"]))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(conf))
    n0 = len(s.proxy.requests)
    del opts["s3_endpoint"], opts["s3_region"]
    with mount(s.url, opts) as d:
        read_models(d)
        t = tier(d)
        assert (t["misses"], t["errors"]) == (0, 0), t
    assert len(s.proxy.requests) - n0 == 1, ranges(s.proxy, n0)
    assert len(list(cache.iterdir())) == 1


def test_two_mounts_at_once_share_a_cache_dir(request, bundle, tmp_path):
    """Two mounts of one object on one cache_dir at the same time, both
    reading everything twice: every byte right, no file ever fails its
    check (each is written whole under its own name and renamed)."""
    s = serve(request, "nginx", bundle, "shared.apbundle")
    cache, opts = cache_opts(tmp_path)
    with mount(s.url, opts) as d1, mount(s.url, opts) as d2:
        for _ in range(2):
            read_models(d1)
            read_models(d2)
        assert tier(d1)["errors"] == tier(d2)["errors"] == 0
    assert sorted(tier_files(cache)) == sorted(extents_of(bundle))
    with mount(s.url, opts) as d:
        read_models(d)
        assert (tier(d)["misses"], tier(d)["errors"]) == (0, 0)


# --------------------------------------------------------------------------
# damaged files


def flip(path, at):
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x20]))


@pytest.mark.parametrize("damage", ["payload", "header", "truncate", "empty"])
def test_damaged_extent_file_is_dropped(request, bundle, tmp_path, damage):
    """A flipped byte (payload or header) fails its check when read; a file
    cut short is dropped at mount. Either way: exact bytes, one error, one
    log line, and exactly that extent fetched again, in one ranged GET."""
    s = serve(request, "nginx", bundle, "damage-%s.apbundle" % damage)
    cache, opts = cache_opts(tmp_path, prefetch="off")
    with mount(s.url, opts) as d:
        read_models(d)
    off, size = layout(bundle)["a.bin"]
    k = (off + size // 2) // EXTENT          # an extent inside a.bin
    f = tier_files(cache)[k]
    if damage == "payload":
        flip(f, HEADER + 12345)
    elif damage == "header":
        flip(f, 40)                           # the extent index
    elif damage == "truncate":
        os.truncate(f, HEADER + EXTENT // 2)  # a torn write
    else:
        os.truncate(f, 0)
    n0 = len(s.proxy.requests)
    with mount(s.url, opts) as d:
        read_models(d)
        t = tier(d)
        assert (t["errors"], t["misses"]) == (1, 1), t
    assert ranges(s.proxy, n0 + 1) == ["bytes=%d-%d" % (k * EXTENT, (k + 1) * EXTENT - 1)]
    log = d.log()
    if damage in ("payload", "header"):
        assert log.count("failed its check; dropped, its bytes fetched again") == 1, log
    else:
        assert log.count("is torn") == 1, log
    # written again, whole
    assert f.stat().st_size == HEADER + EXTENT
    with open(bundle, "rb") as b:
        b.seek(k * EXTENT)
        assert f.read_bytes()[HEADER:] == b.read(EXTENT)


# --------------------------------------------------------------------------
# a full or read-only cache_dir, and the bound


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs of the given size at a fresh directory; unmounted
    after the test."""
    made = []

    def make(size, ro=False):
        p = tmp_path / ("tmpfs%d" % len(made))
        p.mkdir()
        opts = "size=%s,mode=0700" % size + (",ro" if ro else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(p)], check=True)
        made.append(p)
        return p

    try:
        yield make
    finally:
        for p in reversed(made):
            subprocess.run(["umount", str(p)], check=False)


def test_full_cache_dir_reads_go_on(request, bundle, tmpfs):
    """A tmpfs that holds two extent files: the third write fails with
    ENOSPC, counted once, logged once; the tier stops writing and every
    read still returns the model's bytes."""
    s = serve(request, "nginx", bundle, "full.apbundle")
    cache = tmpfs("2100K")
    opts = dict(cache_dir=str(cache), cache_dir_size="64M", prefetch="off", **OPTS)
    want = extents_of(bundle)
    with mount(s.url, opts) as d:
        read_models(d)
        read_models(d)
        t = tier(d)
        assert (t["errors"], t["writing"]) == (1, False), t
        assert t["misses"] >= len(want)
        assert t["bytes_written"] == t["bytes_used"] == 2 * file_bytes(EXTENT)
    log = d.log()
    assert log.count("cannot write: No space left on device; no more extents "
                     "are written to it by this mount (reads go to the server)") == 1, log
    assert len(tier_files(cache)) == 2
    assert not [p for p in cache.rglob(".tmp-*")]


def test_read_only_cache_dir_serves_what_it_holds(request, bundle, tmp_path):
    """A cache_dir filled by one mount, then bind-mounted read-only: the
    cached models come from disk with no request; a model not cached is
    fetched, its write fails with EROFS once, and the bytes are right."""
    s = serve(request, "nginx", bundle, "ro.apbundle")
    cache, opts = cache_opts(tmp_path, prefetch="off")
    with mount(s.url, opts) as d:
        assert read_all(d.path("b.bin")) == MODELS["b.bin"]
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(cache), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        rest = extents_of(bundle) - extents_of(bundle, ["b.bin"])
        assert rest
        n0 = len(s.proxy.requests)
        with mount(s.url, dict(opts, cache_dir=str(ro))) as d:
            assert read_all(d.path("b.bin")) == MODELS["b.bin"]
            assert len(s.proxy.requests) - n0 == 1    # the open's
            assert tier(d)["errors"] == 0
            n1 = len(s.proxy.requests)
            read_models(d)
            t = tier(d)
            assert (t["errors"], t["writing"]) == (1, False), t
            # written nowhere: every load of a missing extent is a GET (of
            # the reader's bytes only, once the first write failed); a GET
            # may cover a run of extents
            gets = len(s.proxy.requests) - n1
            assert t["misses"] >= gets >= len(rest)
        assert d.log().count("cannot write: Read-only file system") == 1, d.log()
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def du_bytes(path):
    out = subprocess.run(["du", "-s", "-B1", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[0])


def test_size_bound_holds_with_evictions(request, bundle, tmpfs):
    """cache_dir_size of three extent files: the files never add up to
    more, evictions count the rest; du of the directory stays within it."""
    s = serve(request, "nginx", bundle, "bound.apbundle")
    cache = tmpfs("64M")
    size = 3 * file_bytes(EXTENT)
    opts = dict(cache_dir=str(cache), cache_dir_size=str(size), prefetch="off", **OPTS)
    want = extents_of(bundle)
    assert len(want) > 3
    with mount(s.url, opts) as d:
        read_models(d)
        t = tier(d)
        assert t["misses"] == len(want) and t["errors"] == 0, t
        files = tier_files(cache)
        assert t["evictions"] == len(want) - len(files), (t, files)
        assert t["bytes_used"] == sum(file_bytes(f.stat().st_size - HEADER)
                                      for f in files.values()) <= size
        assert du_bytes(cache) <= size
    # a second mount with a smaller bound evicts down to it at mount
    with mount(s.url, dict(opts, cache_dir_size=str(file_bytes(EXTENT)))) as d:
        t = tier(d)
        assert t["bytes_used"] <= file_bytes(EXTENT) and t["evictions"] >= 2, t
        assert len(tier_files(cache)) <= 1


# --------------------------------------------------------------------------
# options


@pytest.mark.parametrize("case", ["missing", "file", "size0", "garbage", "small",
                                  "size_alone", "local"])
def test_bad_options_are_refused(nginx_server, bundle, tmp_path, case):
    shutil.copyfile(bundle, os.path.join(nginx_server.root, "opts.apbundle"))
    url = nginx_server.url("opts.apbundle")
    cache = tmp_path / "cache"
    cache.mkdir()
    (tmp_path / "file").write_text("x")
    opts, where, msg = {
        "missing": ({"cache_dir": str(tmp_path / "nope")}, url,
                    "bad option cache_dir=%s: No such file or directory" % (tmp_path / "nope")),
        "file": ({"cache_dir": str(tmp_path / "file")}, url,
                 "bad option cache_dir=%s: not a directory" % (tmp_path / "file")),
        "size0": ({"cache_dir": str(cache), "cache_dir_size": "0"}, url,
                  "bad option cache_dir_size=0: below one extent and its header (1028K)"),
        "garbage": ({"cache_dir": str(cache), "cache_dir_size": "lots"}, url,
                    "bad option cache_dir_size=lots: expected a size"),
        "small": ({"cache_dir": str(cache), "cache_dir_size": "1M"}, url,
                  "bad option cache_dir_size=1M: below one extent and its header"),
        "size_alone": ({"cache_dir_size": "1G"}, url,
                       "cache_dir_size= needs cache_dir=DIR"),
        "local": ({"cache_dir": str(cache)}, str(bundle),
                  "cache_dir= is for a bundle behind a URL (http://, https://, s3://), "
                  "not %s" % bundle),
    }[case]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, log, mounted = run_daemon_expect_failure(where, mnt, opts)
    assert rc != 0 and not mounted
    assert "apbundlefs: " + msg in log, log
    assert list(cache.iterdir()) == []
