"""The test servers themselves (scripts/servers.py, fixtures in remote.py):
what the remote-source tests will rely on, checked with curl, so that a
failure there is known to be the client's and not the server's."""

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, wait_until
from remote import FORBIDDEN_PATH, assert_groups_gone, servers

MiB = 1024 * 1024
SERVERS_PY = REPO / "scripts" / "servers.py"


def payload(size, seed):
    # distinct bytes at every offset of interest, cheap to make
    return hashlib.shake_256(b"apb-servers-%d" % seed).digest(size)


@pytest.fixture(scope="module")
def blob():
    return payload(3 * MiB + 12345, 1)


@pytest.fixture(scope="module")
def on_nginx(nginx_server, blob):
    with open(os.path.join(nginx_server.root, "blob.bin"), "wb") as f:
        f.write(blob)
    return nginx_server.url("blob.bin")


@pytest.fixture(scope="module")
def on_rgw(rgw_server, blob, tmp_path_factory):
    path = tmp_path_factory.mktemp("rgw-up") / "blob.bin"
    path.write_bytes(blob)
    etag = rgw_server.put_object("dir/blob.bin", str(path))
    return rgw_server, "dir/blob.bin", etag


def check_range(result, blob, first, last):
    rc, status, hdrs, body = result
    assert (rc, status) == (0, 206), hdrs
    assert hdrs["content-range"] == "bytes %d-%d/%d" % (first, last, len(blob))
    assert hdrs["content-length"] == str(last - first + 1)
    assert body == blob[first:last + 1]


RANGES = [(0, 0), (1, 4096), (MiB - 1, 2 * MiB + 7)]


# --------------------------------------------------------------------------
# nginx

def test_nginx_ranges_etag_if_match(nginx_server, on_nginx, blob):
    for first, last in RANGES + [(len(blob) - 10, len(blob) - 1)]:
        check_range(servers.curl(on_nginx, headers={"Range": "bytes=%d-%d" % (first, last)}),
                    blob, first, last)
    rc, status, hdrs, body = servers.curl(on_nginx)
    assert (rc, status, body) == (0, 200, blob)
    etag = hdrs["etag"]
    assert etag.startswith('"') and len(etag) > 2
    assert hdrs["accept-ranges"] == "bytes"
    check_range(servers.curl(on_nginx, headers={"Range": "bytes=5-9", "If-Match": etag}),
                blob, 5, 9)
    rc, status, _, _ = servers.curl(on_nginx, headers={"Range": "bytes=5-9",
                                                       "If-Match": '"0-0"'})
    assert (rc, status) == (0, 412)
    rc, status, hdrs, _ = servers.curl(on_nginx, headers={"Range": "bytes=%d-" % len(blob)})
    assert (rc, status) == (0, 416)
    assert hdrs["content-range"] == "bytes */%d" % len(blob)


def test_nginx_forbidden_missing_readonly(nginx_server, on_nginx, blob, tmp_path):
    with open(os.path.join(nginx_server.root, FORBIDDEN_PATH.lstrip("/")), "wb") as f:
        f.write(b"secret")
    assert servers.curl(nginx_server.url(FORBIDDEN_PATH))[:2] == (0, 403)
    assert servers.curl(nginx_server.url("nothing-here.bin"))[:2] == (0, 404)
    tmp = tmp_path / "put-body"
    tmp.write_bytes(b"x" * 100)
    rc, status, _, _ = servers.curl(on_nginx, method="PUT", data_file=str(tmp))
    assert status in (403, 405), status
    assert servers.curl(on_nginx, method="DELETE")[1] in (403, 405)
    assert servers.curl(on_nginx)[3] == blob


def test_nginx_keepalive(nginx_server, on_nginx, blob):
    """Two requests on one connection stay one connection (nginx's own
    connection serial in its access log)."""
    conn = http.client.HTTPConnection("127.0.0.1", nginx_server.port, timeout=10)
    try:
        for first in (0, 100):
            conn.request("GET", "/blob.bin", headers={"Range": "bytes=%d-%d" % (first, first + 9)})
            r = conn.getresponse()
            assert (r.status, r.read()) == (206, blob[first:first + 10])
    finally:
        conn.close()
    log = [line for line in nginx_server.access_log() if '"bytes=0-9"' in line or
           '"bytes=100-109"' in line][-2:]
    assert len(log) == 2, nginx_server.access_log()
    conn_serial = [line.split()[-2] for line in log]
    assert conn_serial[0] == conn_serial[1], log
    assert [line.split()[-1] for line in log] == ["1", "2"], log


@pytest.mark.timeout_s(60)
def test_nginx_limit_rate(tmp_path, nginx_server):
    """limit_rate=2 MB/s: a 4 MiB GET takes ~2.1 s (>= 0.7 of it, generous
    for timer slack) and several times an unlimited one; bytes exact."""
    data = payload(4 * MiB, 2)
    (tmp_path / "slow.bin").write_bytes(data)
    with open(os.path.join(nginx_server.root, "fast.bin"), "wb") as f:
        f.write(data)
    rate = 2_000_000
    expected = len(data) / rate
    with servers.Nginx(tmp_path, limit_rate=rate) as slow:
        t = time.monotonic()
        rc, status, _, body = servers.curl(slow.url("slow.bin"))
        limited = time.monotonic() - t
    t = time.monotonic()
    fast = servers.curl(nginx_server.url("fast.bin"))
    unlimited = time.monotonic() - t
    assert (rc, status, body) == (0, 200, data)
    assert fast[3] == data
    assert limited / expected >= 0.7, "4 MiB at 2 MB/s took %.2f s" % limited
    assert limited >= 1.5
    assert limited >= 3 * unlimited, (limited, unlimited)


def test_nginx_restart_same_port(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    with servers.Nginx(tmp_path) as web:
        port, url = web.port, web.url("a.bin")
        web.stop()
        assert not servers.port_open(port)
        assert servers.curl(url)[0] == 7          # couldn't connect
        web.start()
        assert web.port == port
        assert servers.curl(url)[1:4:2] == (200, b"abc")


# --------------------------------------------------------------------------
# RGW

def test_rgw_ranges_etag_if_match(on_rgw, blob):
    s3, key, etag = on_rgw
    assert etag == '"%s"' % hashlib.md5(blob).hexdigest()
    for first, last in RANGES + [(len(blob) - 10, len(blob) - 1)]:
        check_range(s3.request("GET", key, headers={"Range": "bytes=%d-%d" % (first, last)}),
                    blob, first, last)
    rc, status, hdrs, body = s3.request("GET", key)
    assert (rc, status, body) == (0, 200, blob)
    assert hdrs["etag"] == etag
    check_range(s3.request("GET", key, headers={"Range": "bytes=5-9", "If-Match": etag}),
                blob, 5, 9)
    assert s3.request("GET", key, headers={"Range": "bytes=5-9",
                                           "If-Match": '"%s"' % ("0" * 32)})[:2] == (0, 412)
    assert s3.request("GET", key, headers={"If-None-Match": etag})[:2] == (0, 304)
    rc, status, hdrs, body = s3.request("HEAD", key)
    assert (rc, status, hdrs["content-length"]) == (0, 200, str(len(blob)))
    rc, status, _, body = s3.request("GET", key, headers={"Range": "bytes=%d-" % len(blob)})
    assert (rc, status) == (0, 416), body


def test_rgw_errors(on_rgw):
    s3, key, _ = on_rgw
    rc, status, _, body = s3.request("GET", key, secret_key="wrong" + s3.secret_key[5:])
    assert (rc, status) == (0, 403) and b"SignatureDoesNotMatch" in body, body
    rc, status, _, body = s3.request("GET", key, access_key="APBNOSUCHKEY00000000")
    assert (rc, status) == (0, 403) and b"InvalidAccessKeyId" in body, body
    rc, status, _, body = s3.request("GET", "dir/missing.bin")
    assert (rc, status) == (0, 404) and b"NoSuchKey" in body, body
    rc, status, _, body = s3.request("GET", key, bucket="no-such-bucket")
    assert (rc, status) == (0, 404) and b"NoSuchBucket" in body, body
    # unsigned: anonymous access to a private bucket
    rc, status, _, body = servers.curl(s3.url(key))
    assert (rc, status) == (0, 403), body


def test_rgw_replace_object(rgw_server, tmp_path):
    """A replaced object has a new ETag; If-Match with the old one fails."""
    a, b = payload(100_000, 3), payload(100_000, 4)
    etag_a = rgw_server.put_object("replace.bin", data=a)
    etag_b = rgw_server.put_object("replace.bin", data=b)
    assert etag_a != etag_b
    assert rgw_server.request("GET", "replace.bin", headers={"If-Match": etag_a})[1] == 412
    rc, status, hdrs, body = rgw_server.request("GET", "replace.bin",
                                                headers={"If-Match": etag_b})
    assert (status, hdrs["etag"], body) == (200, etag_b, b)
    rgw_server.delete_object("replace.bin")
    assert rgw_server.request("GET", "replace.bin")[1] == 404


def test_rgw_restart_gateway(rgw_server, on_rgw, blob):
    """radosgw stopped and started again on the same port keeps the data."""
    s3, key, etag = on_rgw
    s3.stop_rgw()
    assert not servers.port_open(s3.port)
    assert s3.request("GET", key, timeout=5)[0] == 7      # couldn't connect
    s3.start_rgw()
    check_range(s3.request("GET", key, headers={"Range": "bytes=10-19"}), blob, 10, 19)


# --------------------------------------------------------------------------
# fault proxy, in front of both servers

@pytest.fixture(params=["nginx", "rgw"])
def through_proxy(request, fault_proxy, blob):
    """(proxy, get(headers) -> curl result) for the blob behind a proxy."""
    if request.param == "nginx":
        web = request.getfixturevalue("nginx_server")
        request.getfixturevalue("on_nginx")
        proxy = fault_proxy(web.endpoint)
        return proxy, lambda headers=None: servers.curl(proxy.endpoint + "/blob.bin",
                                                        headers=headers)
    s3, key, _ = request.getfixturevalue("on_rgw")
    proxy = fault_proxy(s3.endpoint)
    return proxy, lambda headers=None: s3.request("GET", key, headers=headers,
                                                  endpoint=proxy.endpoint)


def test_proxy_pass_through_counts(through_proxy, blob):
    proxy, get = through_proxy
    check_range(get({"Range": "bytes=0-99"}), blob, 0, 99)
    check_range(get({"Range": "bytes=4096-8191"}), blob, 4096, 8191)
    assert get()[3] == blob
    assert proxy.ranges() == ["bytes=0-99", "bytes=4096-8191", None]
    assert [r.method for r in proxy.requests] == ["GET"] * 3
    assert proxy.connections == 3
    proxy.reset_counts()
    assert (proxy.requests, proxy.connections) == ([], 0)


def test_proxy_reset(through_proxy, blob):
    proxy, get = through_proxy
    proxy.reset_after(100_000, count=1)
    rc, status, hdrs, body = get()
    assert (rc, status) == (56, 200), hdrs          # curl: recv failure (reset)
    assert "reset by peer" in hdrs["x-curl-error"]
    assert body == blob[:100_000]
    proxy.reset_after(10, count=1)
    rc, status, _, body = get({"Range": "bytes=1000-1999"})
    assert (rc, status, body) == (56, 206, blob[1000:1010])
    assert get()[3] == blob                          # spent: pass-through again


def test_proxy_truncate(through_proxy, blob):
    proxy, get = through_proxy
    proxy.truncate_after(12_345, count=2)
    for _ in range(2):
        rc, status, hdrs, body = get()
        assert (rc, status) == (18, 200), hdrs      # curl: partial file
        assert "%d bytes remaining" % (len(blob) - 12_345) in hdrs["x-curl-error"]
        assert body == blob[:12_345]
    assert get()[:4:3] == (0, blob)


@pytest.mark.parametrize("code", [404, 416, 500, 503])
def test_proxy_status(through_proxy, blob, code):
    proxy, get = through_proxy
    proxy.status(code, count=2)
    for _ in range(2):
        assert get({"Range": "bytes=0-9"})[:2] == (0, code)
    check_range(get({"Range": "bytes=0-9"}), blob, 0, 9)
    assert [r.fault for r in proxy.requests] == ["status", "status", None]


def test_proxy_delay_until_cleared(through_proxy, blob):
    proxy, get = through_proxy
    proxy.delay(0.4)                 # no count: until clear()
    for _ in range(2):
        t = time.monotonic()
        check_range(get({"Range": "bytes=0-9"}), blob, 0, 9)
        assert time.monotonic() - t >= 0.4
    proxy.clear()
    check_range(get({"Range": "bytes=0-9"}), blob, 0, 9)
    assert [r.fault for r in proxy.requests] == ["delay", "delay", None]


def test_proxy_keepalive_and_upload(rgw_server, fault_proxy):
    """A signed PUT (with Expect: 100-continue) and two GETs on one client
    connection pass the proxy intact."""
    proxy = fault_proxy(rgw_server.endpoint)
    data = payload(2 * MiB, 5)
    path = os.path.join(rgw_server.scratch, "up.bin")
    with open(path, "wb") as f:
        f.write(data)
    rc, status, hdrs, body = rgw_server.request("PUT", "via-proxy.bin", data_file=path,
                                                endpoint=proxy.endpoint)
    os.unlink(path)
    assert (rc, status) == (0, 200), body
    assert hdrs["etag"] == '"%s"' % hashlib.md5(data).hexdigest()
    url = proxy.endpoint + rgw_server.url("via-proxy.bin")[len(rgw_server.endpoint):]
    out = subprocess.run(["curl", "-sS", "-g", *rgw_server.sigv4_args(), "-r", "0-9", url,
                          "--next", *rgw_server.sigv4_args(), "-r", "100-109", url],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == data[0:10] + data[100:110]
    assert [r.method for r in proxy.requests] == ["PUT", "GET", "GET"]
    assert [r.connection for r in proxy.requests][1:] == [2, 2]
    rgw_server.delete_object("via-proxy.bin")


# --------------------------------------------------------------------------
# nothing left behind

def test_stop_leaves_nothing(tmp_path):
    """Context managers stop every daemon of theirs (by process group) and
    remove their scratch dirs."""
    if servers.missing_programs("nginx") or servers.missing_programs("rgw"):
        pytest.skip("servers not installed: scripts/deps.sh install_servers")
    with servers.Nginx(tmp_path) as web:
        groups = [web.daemon.pgid]
        scratches = [web.scratch]
        assert servers.group_pids(web.daemon.pgid)
    with servers.Rgw(memstore_bytes=64 * MiB) as s3:
        groups += [d.pgid for d in s3.daemons.values()]
        scratches.append(s3.scratch)
        assert sorted(s3.daemons) == ["mon", "osd", "radosgw"]
        assert all(servers.group_pids(g) for g in groups[1:])
    assert_groups_gone(groups)
    assert not [s for s in scratches if os.path.exists(s)]


def _start_cli(*args):
    proc = subprocess.Popen([sys.executable, str(SERVERS_PY), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    line = proc.stdout.readline()
    if not line:
        proc.wait(30)
        pytest.fail("servers.py %s exited %s: %s" % (args, proc.returncode,
                                                     proc.stderr.read().decode()))
    return proc, json.loads(line)


def test_cli_sigterm(tmp_path):
    """servers.py nginx DIR: one JSON line, serves, exits 0 on SIGTERM with
    nothing left."""
    if servers.missing_programs("nginx"):
        pytest.skip("nginx-light not installed")
    (tmp_path / "x.bin").write_bytes(b"hello")
    proc, info = _start_cli("nginx", str(tmp_path), "--limit-rate", "1000000")
    try:
        assert info["server"] == "nginx" and info["limit_rate"] == 1000000
        assert servers.curl(info["endpoint"] + "/x.bin")[1:4:2] == (200, b"hello")
        scratch = info["scratch"]
        assert os.path.isdir(scratch)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert_groups_gone([info["pid"]])
    assert not os.path.exists(scratch)
    assert not servers.port_open(int(info["endpoint"].rsplit(":", 1)[1]))


@pytest.mark.timeout_s(120)
def test_cli_killed_takes_servers_along():
    """servers.py rgw killed with SIGKILL (no cleanup code runs): its
    daemons die with it (parent-death signal)."""
    if servers.missing_programs("rgw"):
        pytest.skip("Ceph RGW not installed")
    proc, info = _start_cli("rgw", "--memstore-bytes", str(64 * MiB))
    try:
        assert info["server"] == "rgw" and info["bucket"] == servers.BUCKET
        assert info["access_key"] == servers.ACCESS_KEY
        assert sorted(info["pids"]) == ["mon", "osd", "radosgw"]
        pids = list(info["pids"].values())
        assert all(servers.group_pids(p) for p in pids)
        proc.kill()
        proc.wait(10)
        wait_until(lambda: not any(servers.group_pids(p) for p in pids), 15,
                   what="the RGW daemons to die with servers.py")
    finally:
        proc.kill()
        proc.wait()
        if "/apb-rgw-" in info.get("scratch", ""):
            subprocess.run(["rm", "-rf", info["scratch"]])
