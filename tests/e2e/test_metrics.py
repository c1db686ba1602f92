"""What a monitoring system sees of a mount: the labels and the build info
of .metrics, the same text over HTTP (metrics_listen=), both accepted by
promtool, two mounts scraped side by side without a series in common, and
the "mount" section of .stats (docs/USAGE.md, ".metrics", "Metrics over
HTTP", ".stats").
"""

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import apbformat
from conftest import (APBUNDLEFS, KiB, direct_read, mount, run_apbundle,
                      run_daemon_expect_failure)

A = apbformat.random_bytes(3 * 64 * KiB + 17, 31)
ODD = b"odd"
ODD_NAME = 'we"ird\\name.bin'          # a quote and a backslash, escaped in labels
MODELS = [("a.bin", A), (ODD_NAME, ODD)]
OPTS = {"max_memory": "4M", "eviction": "lru", "prefetch": "off", "prefetch_count": "0"}
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"(,|$)')

promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                              reason="promtool missing (scripts/deps.sh install_promtool)")


def escape(v):
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def series(text):
    """{(name, ((label, raw value), ...)): value} of every sample line."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        mo = SAMPLE.match(line)
        assert mo, "not a sample line: %r" % line
        labels = tuple((m.group(1), m.group(2)) for m in LABEL.finditer(mo.group(3) or ""))
        key = (mo.group(1), labels)
        assert key not in out, "duplicate series %r" % (key,)
        out[key] = mo.group(4)
    return out


def check_promtool(text):
    r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and not r.stdout and not r.stderr, (r.returncode, r.stdout,
                                                                 r.stderr)


def version():
    out = subprocess.run([str(APBUNDLEFS), "--version"], capture_output=True, text=True,
                         check=True).stdout
    return out.split()[1]


@pytest.fixture
def bundle(tmp_path):
    return apbformat.write_v1(tmp_path / "b.apbundle", MODELS)


@pytest.mark.local_only("the bundle label of a URL is the URL")
def test_every_series_carries_the_mount_labels(bundle, tmp_path):
    """A mountpoint with a quote and a backslash in its name: each series
    starts with bundle= and mountpoint=, escaped per the text format, the
    per-model ones end with model=; one build info series, value 1."""
    mnt = tmp_path / 'm"nt\\x'
    with mount(bundle, OPTS, mnt=mnt) as d:
        assert direct_read(d.path("a.bin"), 64 * KiB, 0) == A[:64 * KiB]
        text = d.metrics_raw()
    want = (("bundle", escape(os.path.realpath(bundle))),
            ("mountpoint", escape(os.path.realpath(mnt))))
    got = series(text)
    assert len(got) > 30
    for (name, labels), value in got.items():
        assert labels[:2] == want, (name, labels)
        if name.startswith("apbundlefs_model_"):
            assert len(labels) == 3 and labels[2][0] == "model", (name, labels)
    models = {dict(k[1])["model"] for k in got if k[0] == "apbundlefs_model_hits_total"}
    assert models == {"a.bin", escape(ODD_NAME)}
    assert got[("apbundlefs_model_misses_total", want + (("model", "a.bin"),))] == "1"
    assert got[("apbundlefs_build_info", want + (("version", version()),))] == "1"
    assert [k for k in got if k[0] == "apbundlefs_build_info"] == [
        ("apbundlefs_build_info", want + (("version", version()),))]
    assert got[("apbundlefs_bundle_format_version", want)] == "1"
    assert "# TYPE apbundlefs_build_info gauge\n" in text


@promtool
def test_promtool_accepts_metrics(bundle, tmp_path):
    with mount(bundle, OPTS, mnt=tmp_path / 'm"nt\\x') as d:
        assert direct_read(d.path("a.bin"), 64 * KiB, 0) == A[:64 * KiB]
        check_promtool(d.metrics_raw())


@pytest.mark.local_only("a relative path names a local file")
def test_stats_mount_section(tmp_path, monkeypatch):
    """bundle (absolute, though given relative), mountpoint, format version
    of a version 2 bundle, start time (fixed: two opens with nothing
    between them read one document), version, metrics_listen null."""
    apbformat.write_v2(tmp_path / "v2.apbundle", MODELS)
    monkeypatch.chdir(tmp_path)
    with mount("v2.apbundle", OPTS, mnt=tmp_path / "mnt") as d:
        before = time.time()
        m1 = d.stats()["mount"]
        text = (d.mnt / ".stats").read_text()
        assert (d.mnt / ".stats").read_text() == text
    assert m1["bundle"] == str(tmp_path / "v2.apbundle")
    assert m1["mountpoint"] == str(tmp_path / "mnt")
    assert m1["format_version"] == 2
    assert m1["version"] == version()
    assert m1["metrics_listen"] is None
    assert d.started_ns / 1e9 - 0.002 <= m1["start_time"] <= before


def get(url, method="GET"):
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


def endpoint(d):
    where = d.stats()["mount"]["metrics_listen"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", where), where
    assert not where.endswith(":0")
    return "http://%s" % where


def test_http_endpoint_serves_the_metrics(bundle):
    """Port 0: the daemon takes a free port and .stats says which. GET
    /metrics is the .metrics text, byte for byte, typed for Prometheus;
    HEAD answers, other paths 404, other methods 405."""
    with mount(bundle, dict(OPTS, metrics_listen="127.0.0.1:0")) as d:
        url = endpoint(d)
        assert direct_read(d.path("a.bin"), 64 * KiB, 0) == A[:64 * KiB]
        status, ctype, body = get(url + "/metrics")
        file_text = d.metrics_raw()
        assert status == 200 and ctype == "text/plain; version=0.0.4; charset=utf-8"
        assert body == file_text
        assert get(url + "/")[0] == 200
        assert get(url + "/metrics", "HEAD")[:2] == (200, ctype)
        assert get(url + "/nothing")[0] == 404
        assert get(url + "/metrics", "POST")[0] == 405
        assert d.stats()["cache"]["misses"] == 1   # scrapes read no model
        if shutil.which("promtool"):
            check_promtool(body)
        log = d.log_all()
    assert "metrics_listen=%s\n" % url[len("http://"):] in log, log


@pytest.mark.local_only("the bundle label of a URL is the URL")
def test_two_mounts_scrape_without_collision(bundle, tmp_path):
    """Two mounts of one bundle: their series differ in mountpoint only, and
    no series of one is a series of the other."""
    with mount(bundle, dict(OPTS, metrics_listen="127.0.0.1:0"), mnt=tmp_path / "one") as d1, \
            mount(bundle, dict(OPTS, metrics_listen="127.0.0.1:0"),
                  mnt=tmp_path / "two") as d2:
        u1, u2 = endpoint(d1), endpoint(d2)
        assert u1 != u2
        assert direct_read(d2.path("a.bin"), 64 * KiB, 0) == A[:64 * KiB]
        s1, s2 = series(get(u1 + "/metrics")[2]), series(get(u2 + "/metrics")[2])
    assert not set(s1) & set(s2)

    def strip(keys, mnt):
        mp = ("mountpoint", escape(str(mnt)))
        assert all(mp in k[1] for k in keys)
        return {(k[0], tuple(x for x in k[1] if x != mp)) for k in keys}
    assert strip(s1, tmp_path / "one") == strip(s2, tmp_path / "two")

    def misses(s, mnt):
        return s[("apbundlefs_model_misses_total",
                  (("bundle", escape(os.path.realpath(bundle))),
                   ("mountpoint", escape(str(mnt))), ("model", "a.bin")))]
    assert (misses(s1, tmp_path / "one"), misses(s2, tmp_path / "two")) == ("0", "1")


def busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


@pytest.mark.parametrize("opts, message", [
    ({"metrics_listen": "10.1.2.3:9101"},
     "bad option metrics_listen=10.1.2.3:9101: 10.1.2.3 is not a loopback address; anyone "
     "who can reach it could read the model names and counters: add -o "
     "metrics_allow_remote to mean it"),
    ({"metrics_listen": "0.0.0.0:0"}, "0.0.0.0 is not a loopback address"),
    ({"metrics_listen": "localhost:9101"},
     "bad option metrics_listen=localhost:9101: 'localhost' is not a numeric IPv4 or IPv6 "
     "address"),
    ({"metrics_listen": "127.0.0.1"},
     "bad option metrics_listen=127.0.0.1: expected ADDR:PORT or [ADDR6]:PORT"),
    ({"metrics_listen": "::1:9101"}, "expected ADDR:PORT or [ADDR6]:PORT"),
    ({"metrics_listen": "127.0.0.1:65536"},
     "bad option metrics_listen=127.0.0.1:65536: port '65536' is not a number from 0 to "
     "65535"),
    ({"metrics_allow_remote": True},
     "metrics_allow_remote needs metrics_listen=ADDR:PORT"),
])
def test_bad_listen_refused(bundle, tmp_path, opts, message):
    (tmp_path / "mnt").mkdir()
    rc, err, mounted = run_daemon_expect_failure(bundle, tmp_path / "mnt", dict(OPTS, **opts))
    assert rc not in (0, None) and not mounted
    assert message in err, err
    assert err.count("\n") == 1, err


def test_busy_port_refused(bundle, tmp_path):
    (tmp_path / "mnt").mkdir()
    s = busy_port()
    try:
        where = "127.0.0.1:%d" % s.getsockname()[1]
        rc, err, mounted = run_daemon_expect_failure(bundle, tmp_path / "mnt",
                                                     dict(OPTS, metrics_listen=where))
    finally:
        s.close()
    assert rc not in (0, None) and not mounted
    assert "bad option metrics_listen=%s: %s\n" % (where, os.strerror(errno.EADDRINUSE)) in err


def test_remote_address_with_opt_in(bundle):
    """metrics_allow_remote: 0.0.0.0 is taken, reachable at 127.0.0.1."""
    with mount(bundle, dict(OPTS, metrics_listen="0.0.0.0:0", metrics_allow_remote=True)) as d:
        where = d.stats()["mount"]["metrics_listen"]
        assert where.startswith("0.0.0.0:")
        status, _, body = get("http://127.0.0.1:%s/metrics" % where.split(":")[1])
        assert status == 200 and "apbundlefs_build_info{" in body


def test_ipv6_loopback(bundle):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError as e:
        pytest.skip("no IPv6 loopback: %s" % e)
    with mount(bundle, dict(OPTS, metrics_listen="[::1]:0")) as d:
        where = d.stats()["mount"]["metrics_listen"]
        assert re.fullmatch(r"\[::1\]:\d+", where), where
        assert get("http://%s/metrics" % where)[0] == 200


def test_off_by_default_maps_no_libmicrohttpd(bundle):
    """Without metrics_listen= the daemon listens nowhere and has not loaded
    libmicrohttpd; with it, it has."""
    with mount(bundle, OPTS) as d:
        with open("/proc/%d/maps" % d.pid) as f:
            assert "libmicrohttpd" not in f.read()
    with mount(bundle, dict(OPTS, metrics_listen="127.0.0.1:0")) as d:
        with open("/proc/%d/maps" % d.pid) as f:
            assert "libmicrohttpd" in f.read()


def test_apbundle_stats_prints_the_mount(bundle):
    with mount(bundle, dict(OPTS, metrics_listen="127.0.0.1:0")) as d:
        where = d.stats()["mount"]["metrics_listen"]
        p = run_apbundle("stats", d.mnt)
    assert p.returncode == 0, p.stderr
    line = p.stdout.splitlines()[3]
    assert re.fullmatch(r"mount     %s on %s \(format 1, apbundlefs %s, up 0d 00:00:\d\d, "
                        r"metrics at http://%s/metrics\)" % (
                            re.escape(d.source), re.escape(str(d.mnt)),
                            re.escape(version()), re.escape(where)), line), line


def test_apbundle_stats_mount_line_of_a_crafted_document(tmp_path):
    """Days and hours from start_time; the strings escaped; no metrics
    part when metrics_listen is null; no line without a mount section."""
    doc = {"mount": {"bundle": "\x1b[2Jb", "mountpoint": "/m", "format_version": 2,
                     "start_time": time.time() - 90061.2, "version": "9",
                     "metrics_listen": None},
           "cache": {}, "io": {}, "models": {}}
    (tmp_path / ".stats").write_text(json.dumps(doc))
    p = run_apbundle("stats", tmp_path)
    assert p.returncode == 0, p.stderr
    line = p.stdout.splitlines()[3]
    # 90061 s is 1d 01:01:01; a slow start of apbundle may add a second or so
    assert re.fullmatch(r"mount     \\x1b\[2Jb on /m \(format 2, apbundlefs 9, "
                        r"up 1d 01:01:0[1-5]\)", line), line
    del doc["mount"]
    (tmp_path / ".stats").write_text(json.dumps(doc))
    p = run_apbundle("stats", tmp_path)
    assert p.stdout.splitlines()[3].startswith("cache     "), p.stdout
