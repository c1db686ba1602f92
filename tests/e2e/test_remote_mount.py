"""A bundle behind a URL, mounted and read by the CLI: apbundlefs and
`apbundle list|verify|extract` given http:// and s3:// URLs of bundles
served by nginx and by a Ceph RADOS Gateway (fixtures in remote.py), with
the fault proxy in front where a test counts requests. Every byte read is
compared with the model's own bytes; counters are compared with what the
proxy saw."""

import errno
import os
import re
import shutil

import pytest

import apbformat
from conftest import (MOUNT_TIMEOUT_S, MiB, direct_read, is_mounted, mount, pack,
                      read_all, run_apbundle, run_daemon_expect_failure, start_daemon,
                      wait_until, write_sources)
from remote import serve

KiB = 1024
WAIT_S = 30.0
CHUNK = 64 * KiB
BUDGET = "1M"                 # below the largest model's size

MODELS = {
    "a.bin": apbformat.compressible_bytes(3 * MiB + 12345, 1),
    "b.bin": apbformat.random_bytes(700 * KiB + 3, 2),
    "dir/c.bin": apbformat.compressible_bytes(5000, 3),
}
FORMATS = {"v1": dict(fmt=1), "v2zstd": dict(fmt=2, compress="zstd")}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """{format: local path} of one bundle per format of MODELS."""
    d = tmp_path_factory.mktemp("remote-bundles")
    src = write_sources(d / "src", MODELS)
    inputs = ["%s=%s" % (name, src[name]) for name in sorted(MODELS)]
    return {f: pack(d / ("%s.apbundle" % f), *inputs, **kw) for f, kw in FORMATS.items()}


def cli_env(s):
    """apbundle's environment for s: for S3 the endpoint and region, which
    apbundle takes from there (it has no options for them)."""
    if not s.options:
        return None
    return dict(os.environ, AWS_ENDPOINT_URL_S3=s.options["s3_endpoint"],
                AWS_REGION=s.options["s3_region"])


def range_len(r):
    m = re.fullmatch(r"bytes=(\d+)-(\d+)", r or "")
    assert m, "a request without a closed byte range: %r" % r
    return int(m.group(2)) - int(m.group(1)) + 1


def scattered(size, n, seed):
    """n (offset, length) reads over a model, chunk edges included."""
    h = apbformat.random_bytes(8 * n, seed)
    out = [(0, 1), (CHUNK - 1, 2), (size - 1, 1)]
    for i in range(n):
        off = int.from_bytes(h[8 * i:8 * i + 4], "little") % size
        length = 1 + int.from_bytes(h[8 * i + 4:8 * i + 8], "little") % (300 * KiB)
        out.append((off, min(length, size - off)))
    return out


# --------------------------------------------------------------------------
# the mount


@pytest.mark.timeout_s(300)
@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("server", ["nginx", "rgw"])
def test_mount_reads_exact_bytes_within_budget(request, bundles, fault_proxy, server, fmt):
    """Every model read whole and in scattered O_DIRECT reads equals its
    bytes; the budget holds; .stats' remote counters equal what the proxy
    in front of the server saw (requests, and bytes after the open's)."""
    upstream = (request.getfixturevalue("nginx_server") if server == "nginx"
                else request.getfixturevalue("s3_env")).endpoint
    proxy = fault_proxy(upstream)
    s = serve(request, server, bundles[fmt], "m-%s.apbundle" % fmt, proxy.endpoint)
    opts = dict(s.options, max_memory=BUDGET, chunk_size="64K")
    with mount(s.url, opts) as d:
        for name, data in MODELS.items():
            assert read_all(d.path(name)) == data, name
            for off, length in scattered(len(data), 12, len(name)):
                assert direct_read(d.path(name), length, off) == data[off:off + length], \
                    (name, off, length)
        st = d.stats()
        assert st["cache"]["memory_used"] <= st["cache"]["memory_limit"] == 1 * MiB
        assert st["io"]["errors"] == 0 and st["io"]["checksum_errors"] == 0

        def settled():
            r = d.stats()["remote"]
            reqs = list(proxy.requests)
            after_open = sum(range_len(q.range) for q in reqs[1:])
            return (r["requests"] == len(reqs) and r["bytes"] == after_open) and r
        r = wait_until(settled, WAIT_S, what="remote counters to match the proxy's")
        assert proxy.requests[0].range == "bytes=0-65535"     # the open's
        assert r["requests"] >= 2 and r["retries"] == 0 and r["errors"] == 0
        assert r["changed"] is False and r["connects"] >= 1
        if fmt == "v1":
            # no metadata past the open's 64 KiB: every byte fetched filled a chunk
            assert r["bytes"] == d.stats()["io"]["backing_bytes_read"]
    assert "changed since mount" not in d.log()


def test_cache_run_is_one_request(nginx_server, fault_proxy, bundles):
    """A 1 MiB O_DIRECT read of cold chunks is one load of 16 chunks (a
    get's run takes at most an eighth of the slots: 8M holds 128) and so one
    ranged GET of exactly those bytes."""
    proxy = fault_proxy(nginx_server.endpoint)
    shutil.copyfile(bundles["v1"], os.path.join(nginx_server.root, "run.apbundle"))
    url = proxy.endpoint + "/run.apbundle"
    off = next(m["offset"] for m in apbformat.read_v1_manifest(bundles["v1"])[3]["models"]
               if m["name"] == "a.bin")
    data = MODELS["a.bin"]
    with mount(url, {"max_memory": "8M", "chunk_size": "64K", "prefetch": "off"}) as d:
        n0 = len(proxy.requests)
        assert direct_read(d.path("a.bin"), MiB, MiB) == data[MiB:2 * MiB]
        new = [q.range for q in proxy.requests[n0:]]
        assert new == ["bytes=%d-%d" % (off + MiB, off + 2 * MiB - 1)]
        assert d.stats()["remote"]["bytes"] == MiB


# --------------------------------------------------------------------------
# the CLI


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("server", ["nginx", "rgw"])
def test_cli_list_verify_extract_url(request, bundles, tmp_path, server, fmt):
    s = serve(request, server, bundles[fmt], "cli-%s.apbundle" % fmt)
    env = cli_env(s)
    local = run_apbundle("list", bundles[fmt], check=True)
    remote = run_apbundle("list", s.url, env=env)
    assert (remote.returncode, remote.stdout, remote.stderr) == (0, local.stdout, "")
    v = run_apbundle("verify", s.url, env=env)
    assert v.returncode == 0, v.stderr
    assert sorted(v.stdout.splitlines()) == sorted("OK " + n for n in MODELS)
    for name, data in MODELS.items():
        out = tmp_path / "out.bin"
        x = run_apbundle("extract", s.url, name, "-o", out, env=env)
        assert x.returncode == 0, x.stderr
        assert out.read_bytes() == data, name


@pytest.mark.parametrize("server", ["nginx", "rgw"])
def test_cli_verify_names_corrupt_block_of_url(request, tmp_path, server):
    models = [("m.bin", apbformat.compressible_bytes(600 * KiB, 7))]
    good = apbformat.V2Bundle(models, compression="zstd")
    at = good.entry("m.bin", 5)["offset"] + 10
    bad = tmp_path / "bad.apbundle"
    bad.write_bytes(good.to_bytes(flip=[(at, 0x40)]))
    s = serve(request, server, bad, "bad.apbundle")
    env = cli_env(s)
    v = run_apbundle("verify", s.url, env=env)
    assert v.returncode == 1
    assert v.stdout.splitlines() == ["BAD m.bin: block 5: checksum mismatch"]
    assert "apbundle: %s: model 'm.bin' block 5: checksum mismatch" % s.url in v.stderr


def test_cli_url_errors(nginx_server):
    missing = nginx_server.url("no-such.apbundle")
    p = run_apbundle("list", missing)
    assert (p.returncode, p.stdout) == (1, "")
    assert p.stderr == "apbundle: %s: not found (HTTP 404)\n" % missing


# --------------------------------------------------------------------------
# faults


@pytest.mark.parametrize("server", ["nginx", "rgw"])
def test_object_replaced_under_mount_fails_reads(request, bundles, tmp_path, server):
    """The object replaced by another bundle: the next load fails with EIO,
    and from then every read does, cached chunks included; the log says so
    once; no read ever returns a byte of the new object."""
    s = serve(request, server, bundles["v1"], "swap.apbundle")
    other = dict(MODELS, **{"a.bin": apbformat.random_bytes(len(MODELS["a.bin"]) + 4096, 9)})
    new = pack(tmp_path / "new.apbundle",
               *["%s=%s" % (n, p) for n, p in
                 write_sources(tmp_path / "src", other).items()], fmt=1)
    data = MODELS["a.bin"]
    with mount(s.url, dict(s.options, max_memory="2M", chunk_size="64K",
                           prefetch="off")) as d:
        assert direct_read(d.path("a.bin"), CHUNK, 0) == data[:CHUNK]
        s.replace(new)
        with pytest.raises(OSError) as e:
            direct_read(d.path("a.bin"), CHUNK, 2 * MiB)           # not cached
        assert e.value.errno == errno.EIO
        with pytest.raises(OSError) as e:
            direct_read(d.path("a.bin"), CHUNK, 0)                 # cached before
        assert e.value.errno == errno.EIO
        r = d.stats()["remote"]
        assert r["changed"] is True and r["errors"] == 1
        assert d.stats()["cache"]["memory_used"] == 0
    log = d.log()
    assert log.count("apbundlefs: %s changed since mount" % s.url) == 1, log
    assert re.search(r"object changed", log), log


def test_404_at_mount_is_refused(nginx_server, tmp_path):
    url = nginx_server.url("gone.apbundle")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, log, mounted = run_daemon_expect_failure(url, mnt)
    assert (rc, mounted) == (1, False)
    assert log == "apbundlefs: %s: not found (HTTP 404)\n" % url


def test_403_wrong_secret_is_refused(s3_env, bundles, tmp_path, monkeypatch):
    s3_env.put_object("auth.apbundle", str(bundles["v1"]))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    url = "s3://%s/auth.apbundle" % s3_env.bucket
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, log, mounted = run_daemon_expect_failure(
        url, mnt, {"s3_endpoint": s3_env.endpoint, "s3_region": s3_env.region})
    assert (rc, mounted) == (1, False)
    assert log.startswith("apbundlefs: %s: bad credentials (HTTP 403" % url), log
    assert log.count("\n") == 1, log


def test_s3_options_need_an_s3_bundle(nginx_server, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    url = nginx_server.url("x.apbundle")
    rc, log, mounted = run_daemon_expect_failure(url, mnt, {"s3_region": "eu-west-1"})
    assert (rc, mounted) == (2, False)
    assert log == "apbundlefs: s3_region= is for an s3://BUCKET/KEY bundle, not %s\n" % url


def _pids_with_arg(arg):
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"apbundlefs") and arg.encode() in argv:
            out.append(int(pid))
    return out


def test_background_daemon_reads_after_fork(nginx_server, bundles, tmp_path):
    """Without -f the connections made at open cross fuse_daemonize()'s
    fork: the detached daemon serves exact bytes."""
    shutil.copyfile(bundles["v2zstd"], os.path.join(nginx_server.root, "bg.apbundle"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    d = start_daemon(nginx_server.url("bg.apbundle"), mnt,
                     {"max_memory": BUDGET, "chunk_size": "64K"}, foreground=False)
    try:
        assert d.proc.wait(MOUNT_TIMEOUT_S) == 0, d.log()
        assert is_mounted(mnt)
        for name, data in MODELS.items():
            assert read_all(mnt / name) == data, name
    finally:
        pids = _pids_with_arg(str(mnt))
        d.stop()
        wait_until(lambda: not any(os.path.exists("/proc/%d" % p) for p in pids),
                   WAIT_S, what="the detached daemon to exit")
