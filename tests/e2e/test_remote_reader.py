"""The remote reader (core/remote.c) against real servers, through its
driver build/tools/apbfetch: nginx and a Ceph RADOS Gateway (fixtures in
remote.py), the fault proxy in front of either for counting connections and
requests and for injecting resets, truncations and statuses, and Python's
http.server for a server that ignores Range and sends no ETag. Every read's
bytes are compared with the object's."""

import hashlib
import http.server
import os
import queue
import subprocess
import threading
import time

import pytest

from conftest import BUILD, wait_until
from remote import FORBIDDEN_PATH, servers

KiB = 1024
MiB = 1024 * KiB
APBFETCH = BUILD / "tools" / "apbfetch"
SIZE = 5 * MiB + 4321
WAIT_S = 30.0


def payload(size, seed):
    return hashlib.shake_256(b"apb-remote-%d" % seed).digest(size)


def scattered_ranges(size, n, seed, max_len=300 * KiB):
    """n ranges at offsets that hit chunk edges and odd places alike."""
    h = hashlib.shake_256(b"ranges-%d" % seed).digest(8 * n)
    out = []
    for i in range(n):
        a = int.from_bytes(h[8 * i:8 * i + 4], "little")
        b = int.from_bytes(h[8 * i + 4:8 * i + 8], "little")
        length = 1 + b % max_len
        off = a % (size - length + 1)
        if i % 4 == 0:
            off -= off % (64 * KiB)        # chunk-aligned
        out.append((off, length))
    return out


EDGE_RANGES = [(0, 1), (0, 4096), (1, 1), (4095, 2), (64 * KiB - 1, 64 * KiB + 2),
               (MiB - 1, 2 * MiB + 3), (SIZE - 1, 1), (SIZE - 100000, 100000), (0, SIZE)]


def clean_env(home, **extra):
    """The environment without AWS settings of the machine's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(home)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Fetch:
    """One apbfetch run; stdout and stderr read by threads, line by line,
    so a test can wait for "paused" or a retry line."""

    def __init__(self, url, ranges=(), opts=(), env=None, out=None):
        argv = [str(APBFETCH)] + [str(o) for o in opts]
        if out is not None:
            argv += ["-o", str(out)]
        argv += [url] + ["%d:%d" % r if isinstance(r, tuple) else r for r in ranges]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.out_q, self.err_q = queue.Queue(), queue.Queue()
        self.stdout, self.stderr = [], []
        self._threads = [threading.Thread(target=self._pump, args=(s, q), daemon=True)
                         for s, q in ((self.proc.stdout, self.out_q),
                                      (self.proc.stderr, self.err_q))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream, q):
        for line in stream:
            q.put(line.rstrip("\n"))
        q.put(None)

    def wait_line(self, pred, stream="out", timeout=WAIT_S):
        q, seen = (self.out_q, self.stdout) if stream == "out" else (self.err_q, self.stderr)
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError("no %s line matching after %.0fs: %s" % (
                    stream, timeout, seen[-5:])) from None
            if line is None:
                raise AssertionError("apbfetch ended first; %s: %s" % (stream, seen))
            seen.append(line)
            if pred(line):
                return line

    def go(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def finish(self, timeout=120):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        for t in self._threads:
            t.join(10)
        for q, seen in ((self.out_q, self.stdout), (self.err_q, self.stderr)):
            while True:
                line = q.get_nowait() if not q.empty() else None
                if line is None:
                    break
                seen.append(line)
        self.proc.stdin.close()
        return Result(self.proc.returncode, self.stdout, self.stderr)


class Result:
    def __init__(self, rc, stdout, stderr):
        self.rc, self.stdout, self.stderr = rc, stdout, stderr
        self.info = {}
        self.errors = []
        for line in stdout:
            key, _, value = line.partition(" ")
            if key == "error":
                self.errors.append(value)
            else:
                self.info[key] = value

    def count(self, key):
        return int(self.info[key])

    def log(self):
        return "\n".join(self.stderr)

    def __repr__(self):
        return "<apbfetch rc=%s stdout=%s stderr=%s>" % (self.rc, self.stdout, self.stderr[-10:])


def fetch(url, ranges=(), opts=(), env=None, out=None, timeout=120):
    return Fetch(url, ranges, opts, env, out).finish(timeout)


def expected(blob, ranges):
    return b"".join(blob[o:o + n] for o, n in ranges)


# --------------------------------------------------------------------------
# sources: the same object on nginx and on RGW

@pytest.fixture(scope="module")
def blob():
    return payload(SIZE, 1)


@pytest.fixture(scope="module")
def nginx_blob(nginx_server, blob):
    with open(os.path.join(nginx_server.root, "reader.bin"), "wb") as f:
        f.write(blob)
    return nginx_server


@pytest.fixture(scope="module")
def rgw_blob(rgw_server, blob):
    rgw_server.put_object("reader/blob.bin", data=blob)
    return rgw_server


class Source:
    """How to reach the object: url, env, endpoint (to put a proxy in
    front: via(proxy) gives the url and env through it)."""

    def __init__(self, kind, server, home):
        self.kind, self.server, self.home = kind, server, home

    def via(self, endpoint=None):
        endpoint = endpoint or self.server.endpoint
        if self.kind == "nginx":
            return endpoint + "/reader.bin", clean_env(self.home)
        s3 = self.server
        return "s3://%s/reader/blob.bin" % s3.bucket, clean_env(
            self.home, AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key,
            AWS_REGION=s3.region, AWS_ENDPOINT_URL=endpoint)


@pytest.fixture(params=["nginx", "rgw"])
def source(request, tmp_path):
    server = request.getfixturevalue("nginx_blob" if request.param == "nginx" else "rgw_blob")
    return Source(request.param, server, tmp_path)


def replace_object(src, data):
    """A new version of the object under the reader's feet."""
    if src.kind == "nginx":
        path = os.path.join(src.server.root, "reader.bin")
        st = os.stat(path)
        tmp = path + ".new"
        with open(tmp, "wb") as f:
            f.write(data)
        # nginx's ETag is mtime-size: make sure the mtime moves
        os.utime(tmp, (st.st_atime, st.st_mtime + 10))
        os.replace(tmp, path)
    else:
        src.server.put_object("reader/blob.bin", data=data)


# --------------------------------------------------------------------------
# exact bytes

def test_ranges_exact(source, blob, tmp_path):
    ranges = EDGE_RANGES + scattered_ranges(SIZE, 40, 2)
    url, env = source.via()
    r = fetch(url, ranges, env=env, out=tmp_path / "out")
    assert r.rc == 0, r
    assert r.count("size") == SIZE
    assert (tmp_path / "out").read_bytes() == expected(blob, ranges)
    # the open's request and one per read; one connection kept alive
    assert (r.count("requests"), r.count("retries"), r.count("connects")) == (
        1 + len(ranges), 0, 1), r
    assert r.count("bytes") == sum(n for _, n in ranges)
    assert r.info["identity"].startswith('"'), r   # an ETag, quoted


def test_concurrent_threads_bounded_pool(source, blob, tmp_path, fault_proxy):
    proxy = fault_proxy(source.server.endpoint)
    url, env = source.via(proxy.endpoint)
    ranges = scattered_ranges(SIZE, 96, 3, max_len=200 * KiB)
    r = fetch(url, ranges, opts=["-t", 8, "-p", 3], env=env, out=tmp_path / "out")
    assert r.rc == 0, r
    assert (tmp_path / "out").read_bytes() == expected(blob, ranges)
    assert len(proxy.requests) == 1 + len(ranges)
    # 8 threads share at most 3 connections (the open's is one of them)
    assert 1 <= proxy.connections <= 3, proxy.connections
    assert r.count("connects") == proxy.connections


def test_connection_reuse(source, blob, tmp_path, fault_proxy):
    proxy = fault_proxy(source.server.endpoint)
    url, env = source.via(proxy.endpoint)
    ranges = scattered_ranges(SIZE, 10, 4, max_len=64 * KiB)
    r = fetch(url, ranges, opts=["-n", 5], env=env, out=tmp_path / "out")
    assert r.rc == 0, r
    assert (tmp_path / "out").read_bytes() == expected(blob, ranges)
    assert len(proxy.requests) == 1 + 50
    assert proxy.connections == 1, proxy.requests


def test_vectored_read_is_one_request(source, blob, tmp_path, fault_proxy):
    proxy = fault_proxy(source.server.endpoint)
    url, env = source.via(proxy.endpoint)
    start = 3 * 64 * KiB + 17
    ranges = [(start + i * 64 * KiB, 64 * KiB) for i in range(16)]
    r = fetch(url, ranges, opts=["-v"], env=env, out=tmp_path / "out")
    assert r.rc == 0, r
    assert (tmp_path / "out").read_bytes() == expected(blob, ranges)
    assert proxy.ranges()[1:] == ["bytes=%d-%d" % (start, start + 16 * 64 * KiB - 1)]

    # a bound of 256 KiB: four requests, one after the other
    proxy.reset_counts()
    r = fetch(url, ranges, opts=["-v", "-m", 256 * KiB], env=env, out=tmp_path / "out2")
    assert r.rc == 0, r
    assert (tmp_path / "out2").read_bytes() == expected(blob, ranges)
    assert proxy.ranges()[1:] == ["bytes=%d-%d" % (start + i * 256 * KiB,
                                                   start + (i + 1) * 256 * KiB - 1)
                                  for i in range(4)]


def test_every_read_carries_if_match(source, fault_proxy, tmp_path):
    proxy = fault_proxy(source.server.endpoint)
    url, env = source.via(proxy.endpoint)
    r = fetch(url, [(0, 10), (MiB, 10)], env=env)
    assert r.rc == 0, r
    etag = r.info["identity"]
    assert "if-match" not in proxy.requests[0].headers     # the open learns it
    assert [q.headers.get("if-match") for q in proxy.requests[1:]] == [etag, etag]


@pytest.mark.parametrize("data", [b"", b"hello"], ids=["empty", "small"])
def test_empty_and_small_objects(source, tmp_path, data):
    name = "tiny-%d.bin" % len(data)
    if source.kind == "nginx":
        with open(os.path.join(source.server.root, name), "wb") as f:
            f.write(data)
        url, env = source.server.url(name), clean_env(tmp_path)
    else:
        source.server.put_object("reader/" + name, data=data)
        url, env = source.via()
        url = url.replace("blob.bin", name)
    ranges = [(0, len(data)), (len(data), 0)] + ([(1, 3)] if data else [])
    r = fetch(url, ranges, env=env, out=tmp_path / "out")
    assert r.rc == 0, r
    assert r.count("size") == len(data)
    assert (tmp_path / "out").read_bytes() == expected(data, ranges)
    assert "ignores Range" not in r.log(), r
    r = fetch(url, [(len(data), 1)], env=env)
    assert r.rc == 1 and r.errors == ["%d:1 EINVAL" % len(data)], r


# --------------------------------------------------------------------------
# consistency

@pytest.fixture
def own_object(source, blob):
    """Tests that replace the object put the original back afterwards."""
    yield source
    replace_object(source, blob)


def test_replaced_object_is_stale(own_object, blob, tmp_path):
    src = own_object
    url, env = src.via()
    f = Fetch(url, [(0, 1000), (MiB, 1000), (2 * MiB, 5000)], opts=["--pause-after", 1],
              env=env, out=tmp_path / "out")
    f.wait_line(lambda l: l == "paused")
    new = payload(SIZE, 99)
    replace_object(src, new)
    f.go()
    r = f.finish()
    assert r.rc == 1, r
    assert r.errors == ["%d:1000 ESTALE" % MiB, "%d:5000 ESTALE" % (2 * MiB)], r
    assert "object changed" in r.log(), r
    # the read before the change, nothing after: no byte of the new version
    assert (tmp_path / "out").read_bytes() == blob[:1000]


def test_replaced_object_other_size_is_stale(own_object, blob, tmp_path):
    src = own_object
    url, env = src.via()
    f = Fetch(url, [(0, 100), (100, 100)], opts=["--pause-after", 1], env=env,
              out=tmp_path / "out")
    f.wait_line(lambda l: l == "paused")
    replace_object(src, payload(SIZE + 1, 7))
    f.go()
    r = f.finish()
    assert r.rc == 1 and r.errors == ["100:100 ESTALE"], r
    assert (tmp_path / "out").read_bytes() == blob[:100]


# --------------------------------------------------------------------------
# errors

def test_not_found(source):
    url, env = source.via()
    r = fetch(url.replace("reader", "missing"), env=env)
    assert r.rc == 2 and r.info.get("open-error") == "ENOENT", r
    assert "not found (HTTP 404" in r.log(), r


def test_forbidden_nginx(nginx_blob, tmp_path):
    r = fetch(nginx_blob.url(FORBIDDEN_PATH), env=clean_env(tmp_path))
    assert r.rc == 2 and r.info.get("open-error") == "EACCES", r
    assert "bad credentials (HTTP 403)" in r.log(), r


def test_wrong_secret_rgw(rgw_blob, tmp_path):
    s3 = rgw_blob
    env = clean_env(tmp_path, AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY="wrong",
                    AWS_REGION=s3.region, AWS_ENDPOINT_URL=s3.endpoint)
    r = fetch("s3://%s/reader/blob.bin" % s3.bucket, env=env)
    assert r.rc == 2 and r.info.get("open-error") == "EACCES", r
    assert "bad credentials (HTTP 403 SignatureDoesNotMatch)" in r.log(), r


def test_anonymous_rgw_private_bucket(rgw_blob, tmp_path):
    s3 = rgw_blob
    r = fetch("s3://%s/reader/blob.bin" % s3.bucket,
              env=clean_env(tmp_path, AWS_ENDPOINT_URL=s3.endpoint))
    assert r.rc == 2 and r.info.get("open-error") == "EACCES", r
    assert "bad credentials (HTTP 403 AccessDenied)" in r.log(), r


def test_out_of_range_read_is_einval(nginx_blob, tmp_path):
    r = fetch(nginx_blob.url("reader.bin"), [(SIZE - 10, 11)], env=clean_env(tmp_path))
    assert r.rc == 1 and r.errors == ["%d:11 EINVAL" % (SIZE - 10)], r
    assert r.count("requests") == 1        # refused without asking the server


def paused_with(src, proxy, ranges, opts=(), out=None):
    """apbfetch through proxy, paused after the open (so that faults set
    now hit the reads, not the open)."""
    url, env = src.via(proxy.endpoint)
    f = Fetch(url, ranges, opts=["--pause-after", 0] + list(opts), env=env, out=out)
    f.wait_line(lambda l: l == "paused")
    return f


def test_416_names_the_range(source, fault_proxy):
    proxy = fault_proxy(source.server.endpoint)
    f = paused_with(source, proxy, [(1000, 2000)])
    proxy.status(416)
    f.go()
    r = f.finish()
    assert r.rc == 1 and r.errors == ["1000:2000 EIO"], r
    assert "range bytes=1000-2999 not satisfiable (HTTP 416" in r.log(), r
    assert r.count("retries") == 0


@pytest.mark.parametrize("fault", ["truncate", "reset"])
def test_cut_body_is_retried(source, blob, fault_proxy, tmp_path, fault):
    proxy = fault_proxy(source.server.endpoint)
    ranges = [(12345, 700 * KiB)]
    f = paused_with(source, proxy, ranges, opts=["-B", 10], out=tmp_path / "out")
    getattr(proxy, fault + "_after")(100 * KiB, count=1)
    f.go()
    r = f.finish()
    assert r.rc == 0, r
    assert (tmp_path / "out").read_bytes() == expected(blob, ranges)
    assert r.count("retries") == 1, r
    assert [q.fault for q in proxy.requests] == [None, fault, None]


def test_cut_body_gives_up_after_the_bound(source, fault_proxy):
    proxy = fault_proxy(source.server.endpoint)
    f = paused_with(source, proxy, [(0, 300 * KiB)], opts=["-r", 2, "-B", 10])
    proxy.truncate_after(1000)
    f.go()
    r = f.finish()
    assert r.rc == 1 and r.errors == ["0:%d EIO" % (300 * KiB)], r
    errors = [l for l in r.stderr if l.startswith("log error:")]
    assert len(errors) == 1 and "gave up after 3 attempts" in errors[0], r
    assert len(proxy.requests) == 1 + 3


def test_5xx_retried_then_served(source, blob, fault_proxy, tmp_path):
    proxy = fault_proxy(source.server.endpoint)
    ranges = [(MiB, 100 * KiB)]
    f = paused_with(source, proxy, ranges, opts=["-B", 10], out=tmp_path / "out")
    proxy.status(503, count=2)
    f.go()
    r = f.finish()
    assert r.rc == 0, r
    assert (tmp_path / "out").read_bytes() == expected(blob, ranges)
    assert r.count("retries") == 2
    assert sum(1 for l in r.stderr if l.startswith("log retry:") and "HTTP 503" in l) == 2, r


def test_stalled_answer_times_out_and_is_retried(source, blob, fault_proxy, tmp_path):
    proxy = fault_proxy(source.server.endpoint)
    ranges = [(4 * MiB, 64 * KiB)]
    f = paused_with(source, proxy, ranges, opts=["-S", 1000, "-B", 10], out=tmp_path / "out")
    proxy.delay(4.0, count=1)              # nothing for 4 s: a stall, not a slow server
    t0 = time.monotonic()
    f.go()
    r = f.finish()
    elapsed = time.monotonic() - t0
    assert r.rc == 0, r
    assert (tmp_path / "out").read_bytes() == expected(blob, ranges)
    assert r.count("retries") == 1, r
    assert "too slow" in r.log() or "timed out" in r.log(), r
    assert elapsed < 3.9, elapsed           # given up on before the delay ended


def test_retries_bounded_by_time(source, fault_proxy):
    proxy = fault_proxy(source.server.endpoint)
    f = paused_with(source, proxy, [(0, 10)], opts=["-r", 1000, "-B", 20, "-T", 500])
    proxy.status(500, count=None)
    t0 = time.monotonic()
    f.go()
    r = f.finish()
    elapsed = time.monotonic() - t0
    assert r.rc == 1 and r.errors == ["0:10 EIO"], r
    assert "HTTP 500" in r.log() and "gave up after" in r.log(), r
    # no retry starts after 500 ms; a few requests, not a thousand
    assert elapsed < 5.0, elapsed
    assert 2 <= len(proxy.requests) - 1 <= 30, len(proxy.requests)


def test_nginx_killed_mid_read_and_restarted(blob, tmp_path, fault_proxy):
    root = tmp_path / "www"
    root.mkdir()
    (root / "reader.bin").write_bytes(blob)
    web = servers.Nginx(root, limit_rate=MiB)
    web.start()
    try:
        proxy = fault_proxy(web.endpoint)
        ranges = [(77, 2 * MiB)]           # two seconds at 1 MiB/s
        f = Fetch(proxy.endpoint + "/reader.bin", ranges,
                  opts=["-r", 50, "-B", 50, "-T", 60000], env=clean_env(tmp_path),
                  out=tmp_path / "out")
        wait_until(lambda: len(proxy.requests) >= 2, WAIT_S, what="the read's request")
        web.stop()                         # the body stops mid-way
        f.wait_line(lambda l: l.startswith("log retry:"), stream="err")
        web.start()                        # the same port
        r = f.finish()
    finally:
        web.close()
    assert r.rc == 0, r
    assert (tmp_path / "out").read_bytes() == expected(blob, ranges)
    assert r.count("retries") >= 1


def test_rgw_restarted_between_reads(rgw_blob, blob, tmp_path):
    s3 = rgw_blob
    ranges = [(0, 1000), (3 * MiB, 200 * KiB)]
    url, env = Source("rgw", s3, tmp_path).via()
    f = Fetch(url, ranges, opts=["--pause-after", 1, "-r", 50, "-B", 50, "-T", 60000],
              env=env, out=tmp_path / "out")
    f.wait_line(lambda l: l == "paused")
    s3.stop_rgw()
    try:
        f.go()
        f.wait_line(lambda l: l.startswith("log retry:"), stream="err")
    finally:
        s3.start_rgw()
    r = f.finish()
    assert r.rc == 0, r
    assert (tmp_path / "out").read_bytes() == expected(blob, ranges)
    assert r.count("retries") >= 1


def test_slow_server_exact(blob, tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "reader.bin").write_bytes(blob)
    ranges = [(5, 1500 * KiB), (4 * MiB, 10), (SIZE - 300 * KiB, 300 * KiB)]
    with servers.Nginx(root, limit_rate=MiB) as web:
        t0 = time.monotonic()
        r = fetch(web.url("reader.bin"), ranges, opts=["-t", 2], env=clean_env(tmp_path),
                  out=tmp_path / "out")
        elapsed = time.monotonic() - t0
    assert r.rc == 0, r
    assert (tmp_path / "out").read_bytes() == expected(blob, ranges)
    assert r.count("retries") == 0
    assert elapsed >= 1.0, elapsed         # the limit applied: 1.5 MiB at 1 MiB/s


# --------------------------------------------------------------------------
# S3 settings: credentials, profiles, path-style

def write_profiles(home, s3, name, endpoint, section_style="named"):
    aws = home / ".aws"
    aws.mkdir(exist_ok=True)
    cred = aws / "credentials"
    conf = aws / "config"
    cred.write_text("[other]\naws_access_key_id = NOPE\naws_secret_access_key = nope\n\n"
                    "[%s]\naws_access_key_id = %s\naws_secret_access_key = %s\n"
                    % (name, s3.access_key, s3.secret_key))
    head = "default" if name == "default" else "profile %s" % name
    conf.write_text("[%s]\nregion = %s\nendpoint_url = %s\n" % (head, s3.region, endpoint))
    return cred, conf


def test_credentials_from_default_profile(rgw_blob, blob, tmp_path):
    s3 = rgw_blob
    write_profiles(tmp_path, s3, "default", s3.endpoint)
    r = fetch("s3://%s/reader/blob.bin" % s3.bucket, [(MiB, 4321)], env=clean_env(tmp_path),
              out=tmp_path / "out")
    assert r.rc == 0, r
    assert (tmp_path / "out").read_bytes() == blob[MiB:MiB + 4321]


def test_credentials_from_named_profile_files(rgw_blob, blob, tmp_path):
    s3 = rgw_blob
    files = tmp_path / "elsewhere"
    files.mkdir()
    cred, conf = write_profiles(files, s3, "apbtest", s3.endpoint)
    env = clean_env(tmp_path, AWS_PROFILE="apbtest", AWS_SHARED_CREDENTIALS_FILE=cred,
                    AWS_CONFIG_FILE=conf)
    r = fetch("s3://%s/reader/blob.bin" % s3.bucket, [(7, 70000)], env=env,
              out=tmp_path / "out")
    assert r.rc == 0, r
    assert (tmp_path / "out").read_bytes() == blob[7:70007]
    # the environment's pair wins over the profile's
    env.update(AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY="wrong")
    r = fetch("s3://%s/reader/blob.bin" % s3.bucket, env=env)
    assert r.info.get("open-error") == "EACCES", r
    # a profile asked for by name that does not exist
    env = clean_env(tmp_path, AWS_SHARED_CREDENTIALS_FILE=cred, AWS_CONFIG_FILE=conf)
    r = fetch("s3://%s/reader/blob.bin" % s3.bucket, opts=["--profile", "nosuch"], env=env)
    assert r.rc == 2 and r.info.get("open-error") == "ENOENT", r
    assert "AWS profile 'nosuch' is in neither" in r.log(), r


def test_session_token_header_and_path_style(rgw_blob, fault_proxy, tmp_path):
    s3 = rgw_blob
    proxy = fault_proxy(s3.endpoint)
    env = clean_env(tmp_path, AWS_ACCESS_KEY_ID=s3.access_key,
                    AWS_SECRET_ACCESS_KEY=s3.secret_key, AWS_SESSION_TOKEN="tok3n")
    r = fetch("s3://%s/reader/blob.bin" % s3.bucket, [(0, 10)],
              opts=["--endpoint", proxy.endpoint, "--region", s3.region, "--path-style"],
              env=env)
    req = proxy.requests[0]
    assert req.path == "/%s/reader/blob.bin" % s3.bucket
    assert req.headers.get("x-amz-security-token") == "tok3n"
    assert req.headers.get("x-amz-content-sha256") == "UNSIGNED-PAYLOAD"
    assert "x-amz-security-token" in req.headers["authorization"]    # signed too
    assert "us-east-1/s3/aws4_request" in req.headers["authorization"]
    # the test gateway checks no session tokens: the signed request passes
    assert r.rc == 0, r


# --------------------------------------------------------------------------
# a server that ignores Range and has no ETag (Python's http.server)

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def plain_http(tmp_path):
    root = tmp_path / "plain"
    root.mkdir()
    handler = lambda *a, **k: _Quiet(*a, directory=str(root), **k)  # noqa: E731
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield root, "http://127.0.0.1:%d" % srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(10)


def test_server_ignoring_range(plain_http, tmp_path):
    root, endpoint = plain_http
    data = payload(2 * MiB + 3, 5)
    (root / "x.bin").write_bytes(data)
    ranges = [(0, 10), (MiB + 1, 5000), (2 * MiB - 7, 10)]
    f = Fetch(endpoint + "/x.bin", ranges + [(0, 10)], opts=["--pause-after", 3],
              env=clean_env(tmp_path), out=tmp_path / "out")
    f.wait_line(lambda l: l == "paused")
    out_so_far = (tmp_path / "out").read_bytes()
    # a new version (new mtime) under the reader: Last-Modified tells
    st = os.stat(root / "x.bin")
    (root / "x.bin").write_bytes(payload(2 * MiB + 3, 6))
    os.utime(root / "x.bin", (st.st_atime, st.st_mtime + 10))
    f.go()
    r = f.finish()
    assert out_so_far == expected(data, ranges)
    assert r.info["identity"].startswith("last-modified: "), r
    assert "the server ignores Range (HTTP 200)" in r.log(), r
    assert r.rc == 1 and r.errors == ["0:10 ESTALE"], r
    assert "Last-Modified" in r.log(), r
