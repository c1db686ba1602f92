"""What the daemon does around a bundle behind a URL, beyond reading it
(test_remote_mount.py): libcurl loaded only for a URL (core/curl_dl.c), and
a clear refusal of a URL where it cannot be loaded."""

import errno
import json
import os
import signal
import subprocess

import pytest

import apbformat
from conftest import (APBUNDLE, APBUNDLEFS, MOUNT_TIMEOUT_S, SOURCE, mount, pack, read_all,
                      run_apbundle, wait_until, write_sources)

KiB = 1024
MODELS = {
    "a.bin": apbformat.random_bytes(200 * KiB + 7, 31),
    "b.bin": apbformat.compressible_bytes(5000, 32),
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("remote-daemon")
    src = write_sources(d / "src", MODELS)
    return pack(d / "small.apbundle", *["%s=%s" % (n, src[n]) for n in sorted(MODELS)], fmt=2,
                compress="zstd")


def served(nginx_server, bundle, key):
    with open(bundle, "rb") as f, open(os.path.join(nginx_server.root, key), "wb") as g:
        g.write(f.read())
    return nginx_server.url(key)


def mapped_libraries(pid):
    """The shared objects /proc/PID/maps lists."""
    with open("/proc/%d/maps" % pid) as f:
        return {p[5].strip() for p in (line.split(None, 5) for line in f)
                if len(p) == 6 and ".so" in os.path.basename(p[5].strip())}


def libcurl_path():
    """The path dlopen("libcurl.so.4") finds (ld.so's cache)."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.strip().startswith("libcurl.so.4 ") and "=>" in line:
            return line.split("=>")[1].strip()
    pytest.fail("ldconfig -p lists no libcurl.so.4 (Debian libcurl4)")


# --------------------------------------------------------------------------
# libcurl only for URLs


@pytest.mark.skipif(SOURCE != "local", reason="mounts a local file; APB_E2E_SOURCE=%s" % SOURCE)
def test_local_mount_does_not_map_libcurl(bundle):
    with mount(bundle, {"max_memory": "4M"}) as d:
        assert read_all(d.path("a.bin")) == MODELS["a.bin"]
        libs = mapped_libraries(d.pid)
        assert not [lib for lib in libs if "libcurl" in os.path.basename(lib)], sorted(libs)
        assert any("libfuse3" in lib for lib in libs), sorted(libs)


def test_url_mount_maps_libcurl(nginx_server, bundle):
    url = served(nginx_server, bundle, "maps.apbundle")
    with mount(url, {"max_memory": "4M"}) as d:
        assert read_all(d.path("a.bin")) == MODELS["a.bin"]
        libs = mapped_libraries(d.pid)
        assert [lib for lib in libs if os.path.basename(lib).startswith("libcurl.so.4")], \
            sorted(libs)


def _without_libcurl(argv, **kw):
    """argv run in a mount namespace of its own where libcurl.so.4 is an
    empty file (/dev/null bound over it): dlopen() fails there, as on a
    machine without libcurl4, while the rest of the system sees nothing."""
    script = 'mount --bind /dev/null "$1" && shift && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
            libcurl_path()] + [str(a) for a in argv]


def test_url_without_libcurl_is_refused_local_still_served(nginx_server, bundle, tmp_path):
    """No libcurl: a URL is refused with one line naming the library and the
    package, exit 1, no mount; a local file still mounts and serves exact
    bytes, and apbundle reads it."""
    url = served(nginx_server, bundle, "nocurl.apbundle")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.run(_without_libcurl([APBUNDLEFS, "-f", url, mnt]), capture_output=True,
                       text=True, timeout=60)
    assert (p.returncode, p.stdout) == (1, ""), p.stderr
    assert p.stderr == ("apbundlefs: %s: remote URLs need libcurl (Debian libcurl4): "
                        "%s: file too short\n" % (url, libcurl_path()))
    p = subprocess.run(_without_libcurl([APBUNDLE, "list", url]), capture_output=True,
                       text=True, timeout=60)
    assert (p.returncode, p.stdout) == (1, "")
    assert "remote URLs need libcurl (Debian libcurl4)" in p.stderr, p.stderr
    p = subprocess.run(_without_libcurl([APBUNDLE, "list", bundle]), capture_output=True,
                       text=True, timeout=60)
    assert (p.returncode, p.stdout, p.stderr) == (0, run_apbundle("list", bundle).stdout, "")

    # The daemon on the local file, in the namespace: its mount is seen
    # through /proc/PID/root, and goes away with the namespace.
    log = tmp_path / "daemon.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(_without_libcurl([APBUNDLEFS, "-f", bundle, mnt]),
                                stdout=f, stderr=f, stdin=subprocess.DEVNULL)
    try:
        def mounted():
            with open("/proc/%d/mountinfo" % proc.pid) as m:
                return any(line.split()[4] == str(mnt) for line in m)
        wait_until(lambda: proc.poll() is not None or mounted(), MOUNT_TIMEOUT_S,
                   what="the mount in the namespace")
        assert proc.poll() is None, log.read_text()
        inside = "/proc/%d/root%s" % (proc.pid, mnt)
        for name, data in MODELS.items():
            assert read_all(os.path.join(inside, name)) == data, name
        assert not [lib for lib in mapped_libraries(proc.pid) if "libcurl" in lib]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()


# --------------------------------------------------------------------------
# a password in the URL stays out of sight

PASSWORD = "s3cr3t-pw"


def with_password(url):
    """url with user:PASSWORD@ in it (nginx ignores the Authorization
    header libcurl then sends)."""
    scheme, rest = url.split("://", 1)
    return "%s://reader:%s@%s" % (scheme, PASSWORD, rest)


def redacted(url):
    return url.replace(":%s@" % PASSWORD, ":***@")


def test_password_in_url_is_not_shown(nginx_server, bundle, tmp_path):
    """/proc/mounts (fsname), the daemon's /proc/PID/cmdline, .stats,
    .metrics and the daemon's log name the URL as user:***@; the bytes
    still come."""
    url = with_password(served(nginx_server, bundle, "creds.apbundle"))
    shown = redacted(url)
    with mount(url, {"max_memory": "4M", "prefetch": "off"}) as d:
        assert read_all(d.path("a.bin")) == MODELS["a.bin"]
        with open("/proc/self/mounts") as f:
            line = next(x for x in f if x.split()[1] == str(d.mnt))
        assert line.split()[0] == shown and line.split()[2] == "fuse.apbundlefs", line
        with open("/proc/%d/cmdline" % d.pid, "rb") as f:
            cmdline = f.read()
        assert PASSWORD.encode() not in cmdline and shown.encode() in cmdline, cmdline
        with open(d.path(".stats")) as f:
            text = f.read()
        assert PASSWORD not in text and json.loads(text)["mount"]["bundle"] == shown
        raw = d.metrics_raw()
        assert PASSWORD not in raw and 'bundle="%s"' % shown in raw
        # the object replaced: a failed read, logged by the reader and the mount
        src = os.path.join(nginx_server.root, "creds.apbundle")
        with open(src, "r+b") as f:
            f.seek(os.path.getsize(src) - 1)
            f.write(b"\xff")
        os.utime(src, ns=(0, 0))           # nginx's ETag: mtime and size
        with pytest.raises(OSError):
            read_all(d.path("b.bin"))
    log = d.log()
    assert "%s changed since mount" % shown in log, log
    assert "%s bytes=" % shown in log, log
    assert PASSWORD not in log, log


SIGNATURE = "AKIAEXAMPLE7", "d3adb33fsig"


def test_signed_query_in_url_is_not_shown(nginx_server, bundle, tmp_path):
    """A presigned URL's credential and signature (query values) are shown
    as *** in /proc/mounts, the daemon's cmdline, .stats, .metrics and a
    refusal; the bytes still come (nginx ignores the query)."""
    query = "?X-Amz-Credential=%s&X-Amz-Signature=%s" % SIGNATURE
    url = served(nginx_server, bundle, "signed.apbundle") + query
    shown = url.replace(query, "?X-Amz-Credential=***&X-Amz-Signature=***")
    with mount(url, {"max_memory": "4M", "prefetch": "off"}) as d:
        assert read_all(d.path("a.bin")) == MODELS["a.bin"]
        with open("/proc/self/mounts") as f:
            line = next(x for x in f if x.split()[1] == str(d.mnt))
        assert line.split()[0] == shown, line
        with open("/proc/%d/cmdline" % d.pid, "rb") as f:
            cmdline = f.read()
        assert shown.encode() in cmdline, cmdline
        with open(d.path(".stats")) as f:
            assert json.loads(f.read())["mount"]["bundle"] == shown
        everything = cmdline.decode() + line + d.metrics_raw()
    everything += d.log()
    missing = nginx_server.url("no-such.apbundle")
    p = run_apbundle("list", missing + query)
    assert (p.returncode, p.stderr) == (
        1, "apbundle: %s?X-Amz-Credential=***&X-Amz-Signature=***: not found (HTTP 404)\n"
        % missing)
    for secret in SIGNATURE:
        assert secret not in everything + p.stderr


def test_password_in_url_not_in_refusals(nginx_server, tmp_path):
    url = with_password(nginx_server.url("no-such-creds.apbundle"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.run([APBUNDLEFS, "-f", url, mnt], capture_output=True, text=True,
                       timeout=60)
    assert (p.returncode, p.stderr) == (1, "apbundlefs: %s: not found (HTTP 404)\n"
                                        % redacted(url))
    p = subprocess.run([APBUNDLEFS, "-f", "-o", "s3_region=x", url, mnt], capture_output=True,
                       text=True, timeout=60)
    assert (p.returncode, p.stderr) == (2, "apbundlefs: s3_region= is for an s3://BUCKET/KEY "
                                        "bundle, not %s\n" % redacted(url))
    for cmd in (["list", url], ["verify", url], ["extract", url, "a.bin", "-o", "/dev/null"]):
        p = run_apbundle(*cmd)
        assert (p.returncode, p.stderr) == (1, "apbundle: %s: not found (HTTP 404)\n"
                                            % redacted(url)), cmd


# --------------------------------------------------------------------------
# a server that is down does not flood the log

def test_server_down_logs_each_reason_once(bundle, tmp_path):
    """nginx stopped under the mount; N O_DIRECT reads of N different cold
    chunks, at once: each fails with EIO after its retries and counts in
    io.errors and remote.errors; the log has exactly one line from the
    remote reader (the reason, the same for all) and one read log line per
    chunk, nothing else."""
    import threading
    from conftest import direct_read
    from remote import servers

    n = 10
    chunk = 64 * KiB
    big = apbformat.random_bytes((n + 2) * chunk, 41)
    src = write_sources(tmp_path / "src", {"big.bin": big})
    root = tmp_path / "www"
    root.mkdir()
    pack(root / "down.apbundle", "big.bin=%s" % src["big.bin"], fmt=1)
    with servers.Nginx(str(root)) as web:
        with mount(web.url("down.apbundle"), {"max_memory": "4M", "chunk_size": "64K",
                                              "prefetch": "off"}) as d:
            assert direct_read(d.path("big.bin"), chunk, 0) == big[:chunk]
            web.stop()
            errs = []

            def read(i):
                try:
                    direct_read(d.path("big.bin"), chunk, i * chunk)
                    errs.append(None)
                except OSError as e:
                    errs.append(e.errno)
            threads = [threading.Thread(target=read, args=(i,)) for i in range(1, n + 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert errs == [errno.EIO] * n
            st = d.stats()
            assert st["io"]["errors"] == n and st["remote"]["errors"] == n
            assert st["remote"]["changed"] is False
            got, _ = remote_metrics(d)
            assert got["errors_total"] == n and got["changed"] == 0
    lines = d.log().splitlines()
    remote = [x for x in lines if " bytes=" in x]
    chunks = [x for x in lines if x.startswith("apbundlefs: model 'big.bin' chunk ")]
    assert len(remote) == 1 and "gave up after" in remote[0], lines
    assert sorted(chunks) == sorted(
        "apbundlefs: model 'big.bin' chunk %d (bytes %d to %d): Input/output error"
        % (i, i * chunk, (i + 1) * chunk) for i in range(1, n + 1)), lines
    assert len(lines) == n + 1, lines


def test_distinct_http_statuses_are_distinct_reasons(nginx_server, fault_proxy, tmp_path):
    """Through the fault proxy: two chunks fail with HTTP 500 and one with
    HTTP 503, after their retries. The numbers that differ between the 500s
    (range, milliseconds) do not make them two reasons, the status does:
    two remote lines (one 500, one 503) and three read log lines."""
    from conftest import direct_read
    chunk = 64 * KiB
    data = apbformat.random_bytes(5 * chunk, 45)
    src = write_sources(tmp_path / "src", {"m.bin": data})
    pack(os.path.join(nginx_server.root, "status.apbundle"), "m.bin=%s" % src["m.bin"], fmt=1)
    proxy = fault_proxy(nginx_server.endpoint)
    with mount(proxy.endpoint + "/status.apbundle",
               {"max_memory": "4M", "chunk_size": "64K", "prefetch": "off"}) as d:
        for i, code in ((1, 500), (2, 500), (3, 503)):
            proxy.clear()
            proxy.status(code, count=None)
            with pytest.raises(OSError) as e:
                direct_read(d.path("m.bin"), chunk, i * chunk)
            assert e.value.errno == errno.EIO
        proxy.clear()
        assert direct_read(d.path("m.bin"), chunk, 4 * chunk) == data[4 * chunk:]
        assert d.stats()["remote"]["errors"] == 3
    lines = d.log().splitlines()
    remote = [x for x in lines if " bytes=" in x]
    assert len(remote) == 2, lines
    assert remote[0].endswith(": HTTP 500") and remote[1].endswith(": HTTP 503"), remote
    assert len([x for x in lines if x.startswith("apbundlefs: model 'm.bin' chunk ")]) == 3
    assert len(lines) == 5, lines


# --------------------------------------------------------------------------
# .metrics has the remote counters


def remote_metrics(d):
    from test_stats import parse_metrics
    m, typed = parse_metrics(d.metrics())
    got = {k[0][len("apbundlefs_remote_"):]: v for k, v in m.items()
           if k[0].startswith("apbundlefs_remote_")}
    kinds = {k: v for k, v in typed.items() if k.startswith("apbundlefs_remote_")}
    return got, kinds


def test_metrics_have_remote_counters(nginx_server, tmp_path):
    """A fresh mount of a version 1 bundle, prefetch off, then O_DIRECT
    reads: one chunk (one request), the same chunk again (a hit: none), two
    adjacent cold chunks (one request). .metrics says exactly what .stats
    says, and what the sequence costs."""
    from conftest import direct_read
    chunk = 64 * KiB
    data = apbformat.random_bytes(6 * chunk, 43)
    src = write_sources(tmp_path / "src", {"m.bin": data})
    pack(os.path.join(nginx_server.root, "metrics.apbundle"), "m.bin=%s" % src["m.bin"], fmt=1)
    url = nginx_server.url("metrics.apbundle")
    with mount(url, {"max_memory": "4M", "chunk_size": "64K", "prefetch": "off"}) as d:
        got, kinds = remote_metrics(d)
        assert kinds == {"apbundlefs_remote_%s" % k: t for k, t in [
            ("requests_total", "counter"), ("retries_total", "counter"),
            ("connects_total", "counter"), ("bytes_total", "counter"),
            ("errors_total", "counter"), ("changed", "gauge")]}
        assert got == {"requests_total": 1, "retries_total": 0, "connects_total": 1,
                       "bytes_total": 0, "errors_total": 0, "changed": 0}
        assert direct_read(d.path("m.bin"), chunk, chunk) == data[chunk:2 * chunk]
        assert direct_read(d.path("m.bin"), chunk, chunk) == data[chunk:2 * chunk]
        assert direct_read(d.path("m.bin"), 2 * chunk, 2 * chunk) == data[2 * chunk:4 * chunk]
        got, _ = remote_metrics(d)
        assert got == {"requests_total": 3, "retries_total": 0, "connects_total": 1,
                       "bytes_total": 3 * chunk, "errors_total": 0, "changed": 0}
        r = d.stats()["remote"]
        assert {k + ("" if k == "changed" else "_total"): v for k, v in r.items()} == \
            dict(got, changed=False)


@pytest.mark.skipif(SOURCE != "local", reason="mounts a local file; APB_E2E_SOURCE=%s" % SOURCE)
def test_metrics_of_local_mount_have_no_remote_counters(bundle):
    with mount(bundle, {"max_memory": "4M"}) as d:
        assert "apbundlefs_remote_" not in d.metrics()
        assert "remote" not in d.stats()


# --------------------------------------------------------------------------
# HTTPS: a certificate the mount is told to trust, or not


@pytest.fixture
def tls_nginx(tmp_path, bundle):
    """nginx over HTTPS with a self-signed certificate (servers.py makes
    it with openssl), serving the module's bundle."""
    from remote import servers
    root = tmp_path / "www-tls"
    root.mkdir()
    with open(bundle, "rb") as f:
        (root / "tls.apbundle").write_bytes(f.read())
    with servers.Nginx(str(root), tls=True) as web:
        yield web


def no_ca_env(monkeypatch):
    for k in ("CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(k, raising=False)


def test_https_untrusted_certificate_is_refused(tls_nginx, tmp_path, monkeypatch):
    url = tls_nginx.url("tls.apbundle")
    assert url.startswith("https://127.0.0.1:")
    no_ca_env(monkeypatch)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.run([APBUNDLEFS, "-f", url, mnt], capture_output=True, text=True, timeout=60)
    hint = ("the server's certificate is not trusted (name the file of its CA's certificate "
            "in CURL_CA_BUNDLE or SSL_CERT_FILE)\n")
    assert p.returncode == 1, p.stderr
    assert p.stderr.startswith("apbundlefs: %s: SSL certificate problem: " % url), p.stderr
    assert p.stderr.endswith(hint) and p.stderr.count("\n") == 1, p.stderr
    p = run_apbundle("list", url)
    assert (p.returncode, p.stdout) == (1, "") and p.stderr.endswith(hint), p.stderr
    # a CA file that is not there is named, not taken for "no CA"
    monkeypatch.setenv("CURL_CA_BUNDLE", str(tmp_path / "no-such-ca.pem"))
    p = subprocess.run([APBUNDLEFS, "-f", url, mnt], capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stderr) == (1, "apbundlefs: %s: CURL_CA_BUNDLE=%s: No such file "
                                        "or directory\n" % (url, tmp_path / "no-such-ca.pem"))


@pytest.mark.parametrize("var", ["CURL_CA_BUNDLE", "SSL_CERT_FILE"])
def test_https_with_its_ca_serves_exact_bytes(tls_nginx, monkeypatch, var):
    from conftest import direct_read
    url = tls_nginx.url("tls.apbundle")
    no_ca_env(monkeypatch)
    monkeypatch.setenv(var, tls_nginx.ca_file)
    with mount(url, {"max_memory": "4M", "chunk_size": "64K"}) as d:
        for name, data in MODELS.items():
            assert read_all(d.path(name)) == data, name
        a = MODELS["a.bin"]
        assert direct_read(d.path("a.bin"), 3 * KiB, 70 * KiB) == a[70 * KiB:73 * KiB]
        r = d.stats()["remote"]
        assert r["errors"] == 0 and r["retries"] == 0 and r["connects"] >= 1
    p = run_apbundle("verify", url)
    assert p.returncode == 0, p.stderr
    assert sorted(p.stdout.splitlines()) == sorted("OK " + n for n in MODELS)
