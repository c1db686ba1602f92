"""Server faults under a mounted URL (issue 16 item 6, at mount level; the
reader's own handling of each is in test_remote_reader.py through
tools/apbfetch): the server killed mid-read and restarted on its port, a
slow server, cut (truncated or reset) responses, 416, 5xx and 403 answers.
Each against nginx and RGW where the server can show it, faults injected by
servers.FaultProxy between the daemon and the server. Every test asserts:
no wrong bytes (each read compared with the model's own), the exact errno,
exact remote counters in .stats, a log line naming the failure, and that
the same mount serves the next read once the fault is gone.

The daemon takes the reader's default retry bound (core/remote.h: 5 retries
after the first attempt, 100 ms doubling backoff, 30 s in all; the mount
has no options for them), so a read that gives up does so after six
attempts, in 1.5 to 3.1 s of backoff."""

import errno
import os
import re
import threading
import time

import pytest

import apbformat
from conftest import MiB, direct_read, mount, pack, read_all, wait_until, write_sources
from remote import servers
import test_remote_mount

serve = test_remote_mount.serve

KiB = 1024
CHUNK = 64 * KiB
WAIT_S = 30.0
RETRIES = 5                      # core/remote.h DEF_RETRIES: attempts after the first
DATA = apbformat.random_bytes(3 * MiB + 4321, 61)      # larger than every budget here
# one O_DIRECT read of one chunk is one page-in and so one ranged GET
OPTS = {"max_memory": "1M", "chunk_size": "64K", "prefetch": "off"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("remote-faults")
    src = write_sources(d / "src", {"m.bin": DATA})
    return pack(d / "faults.apbundle", "m.bin=%s" % src["m.bin"], fmt=1)


def upstream(request, server):
    return (request.getfixturevalue("nginx_server") if server == "nginx"
            else request.getfixturevalue("s3_env")).endpoint


def proxied(request, fault_proxy, bundle, server, key):
    """(proxy, Served) of bundle on server under key, reached through a new
    fault proxy."""
    proxy = fault_proxy(upstream(request, server))
    return proxy, serve(request, server, bundle, "%s-%s.apbundle" % (key, server),
                        proxy.endpoint)


def exact(d, off, length=CHUNK):
    """One O_DIRECT read of the mount's m.bin, compared with the source."""
    got = direct_read(d.path("m.bin"), length, off)
    assert got == DATA[off:off + length], (off, length, len(got))


def read_errno(d, off, length=CHUNK):
    with pytest.raises(OSError) as e:
        direct_read(d.path("m.bin"), length, off)
    return e.value.errno


def remote(d):
    return d.stats()["remote"]


def delta(d, before):
    now = remote(d)
    return {k: now[k] - before[k] for k in ("requests", "retries", "errors")}


def reader_lines(log):
    """The remote reader's lines (each names a range) of a daemon log."""
    return [x for x in log.splitlines() if " bytes=" in x]


def model_offset(path):
    """m.bin's offset in the bundle (version 1)."""
    return next(m["offset"] for m in apbformat.read_v1_manifest(path)[3]["models"]
                if m["name"] == "m.bin")


def chunk_line(off):
    i = off // CHUNK
    return ("apbundlefs: model 'm.bin' chunk %d (bytes %d to %d): Input/output error"
            % (i, i * CHUNK, min((i + 1) * CHUNK, len(DATA))))


# --------------------------------------------------------------------------
# the server killed mid-read, and restarted on its port


@pytest.mark.timeout_s(150)
@pytest.mark.parametrize("server", ["nginx", "rgw"])
def test_server_killed_mid_read_then_restarted(request, bundle, tmp_path, server):
    """nginx (rate-limited, so that the read is in flight) is SIGKILLed while
    a 512 KiB read's GET is under way; RGW is stopped between reads (it has
    no rate limit to catch a GET in flight). Reads of cached chunks still
    return the exact bytes; the in-flight read and a cold one fail with EIO
    after their six attempts each (remote.errors 2, retries 10); the server
    started again on the same port, the same two reads return the exact
    bytes without a remount."""
    cached, inflight, cold = (0, 2 * CHUNK), (MiB, 512 * KiB), (2 * MiB, CHUNK)
    # 4M: a run of 8 chunks fits (a get's run takes at most an eighth of
    # the slots), so the 512 KiB read is one GET; and nothing evicts the
    # cached chunks
    opts = dict(OPTS, max_memory="4M")
    web = None
    stopped = False
    try:
        if server == "nginx":
            root = tmp_path / "www"
            root.mkdir()
            os.link(bundle, root / "kill.apbundle")
            # 256 KiB/s: the 512 KiB GET lasts about a second (nginx sends
            # a second's worth at once), long enough to be killed in
            web = servers.Nginx(str(root), limit_rate=256 * KiB).start()
            url, env_opts = web.url("kill.apbundle"), {}
            kill, restart = web.kill, web.start
        else:
            s3 = request.getfixturevalue("s3_env")
            s = serve(request, server, bundle, "kill-rgw.apbundle")
            url, env_opts = s.url, s.options
            kill, restart = s3.stop_rgw, s3.start_rgw
        with mount(url, dict(opts, **env_opts)) as d:
            exact(d, *cached)
            r0 = remote(d)
            result = {}

            def read_inflight():
                try:
                    result["bytes"] = direct_read(d.path("m.bin"), inflight[1], inflight[0])
                except OSError as e:
                    result["errno"] = e.errno
            t = threading.Thread(target=read_inflight)
            if server == "nginx":
                t.start()
                wait_until(lambda: remote(d)["requests"] > r0["requests"], WAIT_S,
                           what="the 512 KiB read's GET")
                kill()
            else:
                kill()
                t.start()
            stopped = True
            t.join(WAIT_S)
            assert not t.is_alive(), "a read under a dead server did not return"
            assert result == {"errno": errno.EIO}, {k: (v if k == "errno" else len(v))
                                                     for k, v in result.items()}
            exact(d, *cached)                               # from memory
            assert read_errno(d, *cold) == errno.EIO
            assert delta(d, r0) == {"requests": 2 * (1 + RETRIES),
                                    "retries": 2 * RETRIES, "errors": 2}
            st = d.stats()
            assert st["io"]["errors"] == 2 and st["remote"]["changed"] is False
            restart()
            stopped = False
            exact(d, *inflight)
            exact(d, *cold)
            exact(d, *cached)
            assert delta(d, r0)["errors"] == 2
        lines = d.log().splitlines()
        gave_up = reader_lines(d.log())
        # both gave up for the same reason (connection refused): one line
        assert len(gave_up) == 1 and "gave up after %d attempts" % (1 + RETRIES) in gave_up[0], \
            lines
        # the read log names the first chunk of each failed load
        assert sorted(x for x in lines if x not in gave_up) == sorted(
            [chunk_line(inflight[0]), chunk_line(cold[0])]), lines
    finally:
        if stopped:
            restart()
        if web is not None:
            web.close()


def test_server_down_disk_tier_serves_what_it_holds(bundle, tmp_path):
    """With cache_dir=, nginx killed after the model's first 2 MiB were read:
    those bytes read again exact though memory holds only 1 MiB of them
    (from the extent files, no request sent), a read of an extent never
    fetched fails with EIO (remote.errors 1); nginx back on its port, it is
    exact too."""
    from test_disk_tier import EXTENT, tier_files
    root = tmp_path / "www"
    root.mkdir()
    os.link(bundle, root / "tier.apbundle")
    cache = tmp_path / "cache"
    cache.mkdir()
    start = model_offset(bundle)
    held = set(range(start // EXTENT, (start + 2 * MiB - 1) // EXTENT + 1))
    cold = 3 * MiB                                  # in an extent not in held
    assert (start + cold) // EXTENT not in held
    web = servers.Nginx(str(root)).start()
    killed = False
    try:
        with mount(web.url("tier.apbundle"), dict(OPTS, cache_dir=str(cache))) as d:
            exact(d, 0, 2 * MiB)
            wait_until(lambda: set(tier_files(cache)) >= held, WAIT_S,
                       what="the extent files of the bytes read")
            assert set(tier_files(cache)) == held
            web.kill()
            killed = True
            r0, t0 = remote(d), d.stats()["disk_tier"]
            exact(d, 0, 2 * MiB)
            assert delta(d, r0) == {"requests": 0, "retries": 0, "errors": 0}
            assert d.stats()["disk_tier"]["hits"] > t0["hits"]
            assert read_errno(d, cold) == errno.EIO
            assert delta(d, r0) == {"requests": 1 + RETRIES, "retries": RETRIES, "errors": 1}
            web.start()
            killed = False
            exact(d, cold)
            exact(d, 0, 2 * MiB)
            assert delta(d, r0)["errors"] == 1 and d.stats()["disk_tier"]["errors"] == 0
        lines = d.log().splitlines()
        (line,) = reader_lines(d.log())
        assert "gave up after %d attempts" % (1 + RETRIES) in line, lines
        assert chunk_line(cold) in lines and len(lines) == 2, lines
    finally:
        if killed:
            web.start()
        web.close()


# --------------------------------------------------------------------------
# a slow server


def test_slow_server_exact_bytes(bundle, tmp_path):
    """nginx at 256 KiB/s per response: a 1 MiB read through the mount is
    one GET of exactly its bytes and returns them; it takes at least 2 s,
    the floor nginx's limit_rate sets for 1 MiB (it sends up to a second's
    worth at once and counts whole seconds: 4 s of bytes less up to 2),
    which shows the limit applied to the daemon's GET. Only RGW has no rate
    limit."""
    root = tmp_path / "www"
    root.mkdir()
    os.link(bundle, root / "slow.apbundle")
    with servers.Nginx(str(root), limit_rate=256 * KiB) as web:
        with mount(web.url("slow.apbundle"), dict(OPTS, max_memory="8M")) as d:
            r0 = remote(d)
            t0 = time.monotonic()
            exact(d, MiB, MiB)
            elapsed = time.monotonic() - t0
            assert delta(d, r0) == {"requests": 1, "retries": 0, "errors": 0}
            assert remote(d)["bytes"] - r0["bytes"] == MiB
        assert reader_lines(d.log()) == []
        gets = [x for x in web.access_log() if "slow.apbundle" in x]
        assert len(gets) == 2, gets                         # the open's and the read's
    assert elapsed >= 2.0, elapsed


# --------------------------------------------------------------------------
# cut responses: retried within the bound, EIO beyond it


@pytest.mark.parametrize("fault", ["truncate", "reset"])
@pytest.mark.parametrize("server", ["nginx", "rgw"])
def test_cut_responses(request, bundle, fault_proxy, server, fault):
    """Three responses cut after 1000 body bytes: the read returns the exact
    bytes, remote.retries +3, errors 0. Cut responses without end: the read
    fails with EIO after six attempts, errors +1, one reader line saying it
    gave up and one read log line naming the chunk; the fault cleared, the
    same chunk and others read exact."""
    proxy, s = proxied(request, fault_proxy, bundle, server, "cut-" + fault)
    cut = getattr(proxy, fault + "_after")
    with mount(s.url, dict(OPTS, **s.options)) as d:
        r0 = remote(d)
        n0 = len(proxy.requests)
        cut(1000, count=3)
        exact(d, 5 * CHUNK)
        assert delta(d, r0) == {"requests": 4, "retries": 3, "errors": 0}
        assert [q.fault for q in proxy.requests[n0:]] == [fault] * 3 + [None]

        r1 = remote(d)
        cut(1000, count=None)
        assert read_errno(d, 9 * CHUNK) == errno.EIO
        proxy.clear()
        assert delta(d, r1) == {"requests": 1 + RETRIES, "retries": RETRIES, "errors": 1}
        exact(d, 9 * CHUNK)
        exact(d, 5 * CHUNK)
        exact(d, 20 * CHUNK, 3 * CHUNK)
        assert delta(d, r1)["errors"] == 1 and d.stats()["io"]["errors"] == 1
    lines = d.log().splitlines()
    gave_up = reader_lines(d.log())
    assert len(gave_up) == 1, lines
    at = model_offset(bundle) + 9 * CHUNK
    why = {"truncate": "transfer closed with %d bytes remaining to read" % (CHUNK - 1000),
           "reset": "Recv failure: Connection reset by peer"}[fault]       # libcurl's words
    assert re.fullmatch(r"apbundlefs: %s bytes=%d-%d: gave up after %d attempts in \d+ ms: %s"
                        % (re.escape(s.url), at, at + CHUNK - 1, 1 + RETRIES, re.escape(why)),
                        gave_up[0]), gave_up
    assert chunk_line(9 * CHUNK) in lines and len(lines) == 2, lines


@pytest.mark.parametrize("server", ["nginx", "rgw"])
def test_cut_responses_under_a_prefetching_reader(request, bundle, fault_proxy, server):
    """The model read whole, start to end, with prefetch on (the defaults
    but the budget), while the first four requests after the mount are cut
    (two reset after 5000 body bytes, two truncated after 100), whichever
    reads or prefetch jobs they belong to: the bytes are the model's,
    remote.retries is exactly 4 (one per cut), errors 0, and the proxy saw
    every request .stats counts, the cut ones among them."""
    proxy, s = proxied(request, fault_proxy, bundle, server, "cut-seq")
    with mount(s.url, dict(s.options, max_memory="1M", chunk_size="64K")) as d:
        proxy.reset_after(5000, count=2)
        proxy.truncate_after(100, count=2)
        assert read_all(d.path("m.bin")) == DATA

        def settled():
            r = remote(d)
            return r["requests"] == len(proxy.requests) and r
        r = wait_until(settled, WAIT_S, what="remote counters to match the proxy's")
        assert (r["retries"], r["errors"]) == (4, 0), r
        assert [q.fault for q in proxy.requests if q.fault] == ["reset"] * 2 + ["truncate"] * 2
        assert d.stats()["io"]["errors"] == 0
    assert reader_lines(d.log()) == [] and d.log() == "", d.log()


# --------------------------------------------------------------------------
# HTTP errors


@pytest.mark.parametrize("server", ["nginx", "rgw"])
def test_416_fails_the_read_at_once(request, bundle, fault_proxy, server):
    """A 416 to a read (the proxy answers it): EIO with no retry, a reader
    line naming the range and the status; the next read of the same chunk
    returns its bytes."""
    proxy, s = proxied(request, fault_proxy, bundle, server, "416")
    with mount(s.url, dict(OPTS, **s.options)) as d:
        r0 = remote(d)
        proxy.status(416, count=1)
        off = 7 * CHUNK
        assert read_errno(d, off) == errno.EIO
        assert delta(d, r0) == {"requests": 1, "retries": 0, "errors": 1}
        exact(d, off)
        exact(d, 0, 2 * CHUNK)
    lines = d.log().splitlines()
    assert reader_lines(d.log()) == [x for x in lines if "range bytes=" in x], lines
    (line,) = reader_lines(d.log())
    at = model_offset(bundle) + off
    assert "range bytes=%d-%d not satisfiable (HTTP 416" % (at, at + CHUNK - 1) in line, line
    assert chunk_line(off) in lines and len(lines) == 2, lines


@pytest.mark.parametrize("server", ["nginx", "rgw"])
def test_5xx_retried_then_given_up(request, bundle, fault_proxy, server):
    """Two 503s, then the server's answer: exact bytes, retries +2. 503s
    without end: EIO after six attempts, one reader line ending with the
    status; once the server answers again the same chunk reads exact."""
    proxy, s = proxied(request, fault_proxy, bundle, server, "5xx")
    with mount(s.url, dict(OPTS, **s.options)) as d:
        r0 = remote(d)
        proxy.status(503, count=2)
        exact(d, 3 * CHUNK)
        assert delta(d, r0) == {"requests": 3, "retries": 2, "errors": 0}
        r1 = remote(d)
        proxy.status(503, count=None)
        assert read_errno(d, 11 * CHUNK) == errno.EIO
        proxy.clear()
        assert delta(d, r1) == {"requests": 1 + RETRIES, "retries": RETRIES, "errors": 1}
        exact(d, 11 * CHUNK)
        exact(d, 3 * CHUNK)
    lines = d.log().splitlines()
    (line,) = reader_lines(d.log())
    assert "gave up after %d attempts" % (1 + RETRIES) in line and line.endswith(": HTTP 503"), \
        lines
    assert chunk_line(11 * CHUNK) in lines and len(lines) == 2, lines


def rotate_secret(s3, secret):
    """Give the gateway's user key a new secret (radosgw-admin; the running
    gateway takes it at once)."""
    s3.radosgw_admin("key", "create", "--uid", "apb", "--key-type", "s3",
                     "--access-key", s3.access_key, "--secret-key", secret)


@pytest.mark.parametrize("server", ["nginx", "rgw"])
def test_403_mid_mount(request, bundle, fault_proxy, server):
    """Credentials refused after the mount: on RGW the user's secret is
    rotated (radosgw-admin) under the mount, on nginx (no credentials) the
    proxy answers 403 twice. Two reads fail with EACCES (docs/USAGE.md) at
    once, not retried, one reader line (one reason) says "bad credentials (HTTP 403";
    with the secret back (the fault gone) the same mount reads exact."""
    proxy, s = proxied(request, fault_proxy, bundle, server, "403")
    s3 = request.getfixturevalue("s3_env") if server == "rgw" else None
    rotated = False
    try:
        with mount(s.url, dict(OPTS, **s.options)) as d:
            exact(d, 0)
            r0 = remote(d)
            if s3 is not None:
                rotated = True
                rotate_secret(s3, "rotated" + s3.secret_key[len("rotated"):])
            else:
                proxy.status(403, count=2)
            assert read_errno(d, 13 * CHUNK) == errno.EACCES
            assert read_errno(d, 14 * CHUNK) == errno.EACCES
            if s3 is not None:
                rotate_secret(s3, s3.secret_key)
                rotated = False
            assert delta(d, r0) == {"requests": 2, "retries": 0, "errors": 2}
            exact(d, 13 * CHUNK)
            exact(d, 14 * CHUNK)
            exact(d, 0)
            assert remote(d)["changed"] is False and d.stats()["io"]["errors"] == 2
        lines = d.log().splitlines()
        (line,) = reader_lines(d.log())
        assert "bad credentials (HTTP 403" in line, lines
        if s3 is not None:
            assert line.endswith("bad credentials (HTTP 403 SignatureDoesNotMatch)"), line
    finally:
        if rotated:
            rotate_secret(s3, s3.secret_key)
