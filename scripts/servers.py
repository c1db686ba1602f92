#!/usr/bin/python3
"""Real servers for the remote-source tests and benchmarks, on 127.0.0.1.

    servers.py nginx DIR [--limit-rate BYTES] [--forbid PATH]... [--port N] [--tls]
    servers.py rgw [--memstore-bytes N] [--bucket NAME] [--mgr]
    servers.py proxy URL [--port N]
    servers.py -h | --help | COMMAND --help

Each command starts its server, prints one JSON line (endpoint; for rgw also
region, bucket and credentials) and runs until SIGINT or SIGTERM, then stops
everything it started and removes its scratch dir.

  nginx  Debian nginx-light serving DIR read-only (GET/HEAD) with byte
         ranges, ETag and keepalive; config, pid, logs and temp dirs in a
         scratch dir; --limit-rate caps each response's bytes/s, --forbid
         PATH answers 403 for that URL path; --tls serves HTTPS only, with
         a self-signed certificate for 127.0.0.1 made by openssl in the
         scratch dir (its path: "ca_file" in the JSON line).
  rgw    a single-node Ceph RADOS Gateway (S3): one mon, one memstore OSD,
         no mgr unless --mgr, beast frontend; a user with a fixed access key
         and secret, and one bucket. Everything (config, data, sockets,
         logs) in one scratch dir given to every Ceph tool with -c; nothing
         in /etc/ceph or /var/log/ceph.
  proxy  a fault-injecting HTTP proxy in front of URL (pass-through from
         the command line; tests switch faults at run time, see FaultProxy).

As a module (tests/e2e/remote.py, the benchmarks):

    with servers.Nginx(directory, limit_rate=2_000_000) as web:
        web.url("model.bin")
    with servers.Rgw() as s3:
        s3.put_object("key", path)
        status, headers, body = s3.request("GET", "key", headers={"Range": "bytes=0-9"})
    with servers.FaultProxy(web.endpoint) as proxy:
        proxy.reset_after(4096)          # next responses: 4096 body bytes, then RST

Every daemon runs in its own process group with SIGKILL as its parent-death
signal, so nothing outlives the Python process that started it, even if that
process is killed; stop() sends SIGTERM to the group, waits a bounded time,
then SIGKILLs it. Every start has a timeout and fails with ServerError
carrying the tail of the daemon's log, after cleaning up.
"""

import argparse
import atexit
import contextlib
import ctypes
import fcntl
import http.client
import json
import os
import shutil
import signal
import socket
import socketserver
import ssl
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import urllib.parse
import uuid

REGION = "us-east-1"
ACCESS_KEY = "APBTESTACCESSKEY0001"
SECRET_KEY = "apbtestsecretkey0000000000000000000000000"
BUCKET = "apb"

START_TIMEOUT_S = 20.0       # nginx: start until it answers
RGW_START_TIMEOUT_S = 120.0  # the whole Ceph bootstrap
STOP_TIMEOUT_S = 10.0        # SIGTERM until exit, then SIGKILL
CEPH_CMD_TIMEOUT_S = 30.0    # one ceph / radosgw-admin command
LOG_TAIL_LINES = 40

NGINX_PACKAGES = ("nginx-light",)
RGW_PACKAGES = ("ceph-mon", "ceph-osd", "radosgw", "ceph-common")
NGINX_BIN = "/usr/sbin/nginx"
RGW_BINS = ("/usr/bin/ceph-mon", "/usr/bin/ceph-osd", "/usr/bin/radosgw",
            "/usr/bin/radosgw-admin", "/usr/bin/ceph", "/usr/bin/monmaptool")


class ServerError(RuntimeError):
    """A server did not start (the message carries its log's tail) or a
    request to set it up failed."""


def missing_programs(kind):
    """The programs `kind` ("nginx", "rgw" or "curl") needs that are not
    installed (scripts/deps.sh install_servers installs them)."""
    progs = {"nginx": (NGINX_BIN,), "rgw": RGW_BINS + ("/usr/bin/curl",),
             "curl": ("/usr/bin/curl",)}[kind]
    return [p for p in progs if not os.access(p, os.X_OK)]


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's
    ephemeral range; a start that loses the race fails and is retried)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path, lines=LOG_TAIL_LINES):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        return "(no log %s: %s)" % (path, e.strerror)
    return "\n".join(text.splitlines()[-lines:]) or "(log %s is empty)" % path


def http_ready(port, header, path="/", tls=False):
    """True once an HTTP server on 127.0.0.1:port answers `HEAD path` with
    response header `header` (its own mark: another program that holds
    the port would not send it). tls: over HTTPS, whatever its
    certificate (the mark is the check)."""
    if tls:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=2,
                                           context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("HEAD", path)
        r = conn.getresponse()
        return r.getheader(header) is not None
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_for(cond, timeout, what, interval=0.05, alive=None):
    """Poll cond() until truthy (returned); ServerError on timeout or when
    alive() (if given) turns false first."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if alive is not None and not alive():
            raise ServerError("%s: the daemon exited first" % what)
        if time.monotonic() >= deadline:
            raise ServerError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


# --------------------------------------------------------------------------
# processes

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
_LIVE = set()                # Daemon objects started and not yet stopped
_OPEN = set()                # Nginx and Rgw objects started and not yet closed
_LIVE_LOCK = threading.Lock()


def _child_setup():
    # own process group (stop() signals the group: nginx or ceph helpers
    # with it), and SIGKILL when the starting thread's process dies, so that
    # a killed test run leaves no server behind
    os.setpgid(0, 0)
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def group_pids(pgid):
    """The pids of live processes in process group pgid (from /proc)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(d))
    return pids


class Daemon:
    """One long-running server process: own process group, output to a log
    file, bounded stop."""

    def __init__(self, name, argv, log_path, env=None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT, env=env,
                                         preexec_fn=_child_setup, close_fds=True)
        except BaseException:
            self._log.close()
            raise
        self.pid = self.pgid = self.proc.pid
        with _LIVE_LOCK:
            _LIVE.add(self)

    def alive(self):
        return self.proc.poll() is None

    def log_tail(self):
        return "---- %s log (%s), last lines:\n%s" % (self.name, self.log_path,
                                                       tail(self.log_path))

    def _signal_group(self, sig):
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout=STOP_TIMEOUT_S, sig=signal.SIGTERM):
        """SIGTERM (or sig) to the group, wait up to timeout, then SIGKILL
        the group; returns the exit status. Idempotent."""
        try:
            if self.proc.poll() is None:
                self._signal_group(sig)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            # the leader may be gone while helpers of its group are not
            self._signal_group(signal.SIGKILL)
            self.proc.wait()
            deadline = time.monotonic() + timeout
            while group_pids(self.pgid) and time.monotonic() < deadline:
                time.sleep(0.02)
            return self.proc.returncode
        finally:
            self._log.close()
            with _LIVE_LOCK:
                _LIVE.discard(self)

    def kill(self):
        """SIGKILL at once (a crash, for fault tests)."""
        return self.stop(timeout=STOP_TIMEOUT_S, sig=signal.SIGKILL)


def stop_all():
    """Close every server (daemons, scratch dirs) and stop every daemon
    still running: at exit."""
    with _LIVE_LOCK:
        servers = list(_OPEN)
    for s in servers:
        s.close()
    with _LIVE_LOCK:
        live = list(_LIVE)
    for d in live:
        d.stop(timeout=3.0)


atexit.register(stop_all)


def run_tool(argv, timeout=CEPH_CMD_TIMEOUT_S, what=None, env=None, check=True):
    """Run a short command with a timeout; ServerError with its output if it
    fails."""
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout, env=env, preexec_fn=_child_setup)
    except subprocess.TimeoutExpired as e:
        raise ServerError("%s: timed out after %.0f s\n%s" % (
            what or " ".join(argv), timeout, (e.stderr or b"").decode("utf-8", "replace")))
    if check and r.returncode != 0:
        raise ServerError("%s: exit %d\n%s%s" % (
            what or " ".join(argv), r.returncode, r.stdout.decode("utf-8", "replace"),
            r.stderr.decode("utf-8", "replace")))
    return r


# --------------------------------------------------------------------------
# curl

def curl(url, *args, method=None, headers=None, data_file=None, timeout=60.0):
    """One request with curl; returns (exit code, HTTP status, headers as a
    lower-cased dict of the final response, body bytes). Never raises on an
    HTTP or transfer error: tests look at all four."""
    with tempfile.TemporaryDirectory(prefix="apb-curl-") as tmp:
        hfile, bfile = os.path.join(tmp, "h"), os.path.join(tmp, "b")
        argv = ["curl", "-sS", "-g", "-D", hfile, "-o", bfile, "-w", "%{http_code}",
                "--max-time", str(timeout)]
        if method:
            argv += ["-X", method] if method != "HEAD" else ["-I"]
        for k, v in (headers or {}).items():
            argv += ["-H", "%s: %s" % (k, v)]
        if data_file is not None:
            argv += ["-T", data_file]
        argv += list(args) + [url]
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout + 10)
        try:
            status = int(r.stdout.decode() or 0)
        except ValueError:
            status = 0
        hdrs = {}
        if os.path.exists(hfile):
            with open(hfile, "rb") as f:
                blocks = f.read().decode("latin-1").split("\r\n\r\n")
            blocks = [b for b in blocks if b.strip()]
            for line in (blocks[-1].split("\r\n")[1:] if blocks else []):
                if ":" in line:
                    k, v = line.split(":", 1)
                    hdrs[k.strip().lower()] = v.strip()
        body = b""
        if os.path.exists(bfile):
            with open(bfile, "rb") as f:
                body = f.read()
        if r.returncode:
            hdrs.setdefault("x-curl-error", r.stderr.decode("utf-8", "replace").strip())
        return r.returncode, status, hdrs, body


class _Server:
    """What Nginx and Rgw share: a scratch dir (made by start() unless
    given, removed by close()), registration for the exit handler, the
    context manager."""

    def _open(self, prefix, base=None):
        if self.scratch is None:
            self.scratch = tempfile.mkdtemp(prefix=prefix, dir=base)
        with _LIVE_LOCK:
            _OPEN.add(self)

    def close(self):
        self.stop()
        if self._own_scratch and self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None
        with _LIVE_LOCK:
            _OPEN.discard(self)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------
# nginx

_NGINX_CONF = """\
daemon off;
# one process: nothing to drop privileges to (it reads DIR as its starter
# does) and nothing that outlives it
master_process off;
pid {scratch}/nginx.pid;
error_log {scratch}/error.log info;
events {{ worker_connections 1024; }}
http {{
    types {{ }}
    default_type application/octet-stream;
    log_format ranges '$remote_addr "$request" $status $body_bytes_sent '
                      '"$http_range" "$http_if_match" $connection $connection_requests';
    access_log {scratch}/access.log ranges;
    client_body_temp_path {scratch}/tmp/body;
    proxy_temp_path {scratch}/tmp/proxy;
    fastcgi_temp_path {scratch}/tmp/fastcgi;
    uwsgi_temp_path {scratch}/tmp/uwsgi;
    scgi_temp_path {scratch}/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    etag on;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    max_ranges 1;
    server {{
        listen 127.0.0.1:{port}{ssl};
        server_name localhost;
{tls}        root {root};
        autoindex {autoindex};
        limit_rate {limit_rate};
        # how start() knows that this nginx, not another server, has the port
        add_header X-Apb-Nginx 1 always;
{forbid}        location / {{
            limit_except GET {{ deny all; }}
        }}
    }}
}}
"""


class Nginx(_Server):
    """nginx serving `root` read-only on 127.0.0.1:port (a free one unless
    given). limit_rate: bytes/s per response (0: none); forbid: URL paths
    answered with 403; autoindex: directories answer with an HTML listing
    (what `rclone mount`'s http backend reads to find files; the benchmark
    turns it on). start() is called by __enter__; stop()/start() again
    restart it on the same port (a server that goes away mid-read).
    tls: HTTPS only, with a self-signed certificate for 127.0.0.1 and
    localhost that openssl makes in the scratch dir at the first start
    (`ca_file`: the file a client must trust)."""

    def __init__(self, root, limit_rate=0, forbid=(), port=None, scratch=None, tls=False,
                 autoindex=False):
        self.tls = bool(tls)
        self.root = os.path.abspath(root)
        self.limit_rate = int(limit_rate)
        self.forbid = list(forbid)
        self.autoindex = bool(autoindex)
        self.port = port
        self._own_scratch = scratch is None
        self.scratch = scratch
        self.daemon = None

    @property
    def endpoint(self):
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.port)

    @property
    def ca_file(self):
        """The certificate (self-signed: its own CA) of a tls server."""
        return os.path.join(self.scratch, "cert.pem") if self.tls else None

    def _make_cert(self):
        """A P-256 key and a self-signed certificate for 127.0.0.1 and
        localhost, valid for two days (openssl; a few ms)."""
        if os.path.exists(self.ca_file):
            return
        if shutil.which("openssl") is None:
            raise ServerError("openssl is not installed; scripts/deps.sh install_servers")
        run_tool(["openssl", "req", "-x509", "-newkey", "ec",
                  "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                  "-subj", "/CN=apbundlefs test nginx",
                  "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                  "-keyout", os.path.join(self.scratch, "key.pem"), "-out", self.ca_file],
                 timeout=60, what="openssl: making the test certificate")

    def url(self, path=""):
        return "%s/%s" % (self.endpoint, urllib.parse.quote(path.lstrip("/")))

    def _write_conf(self):
        forbid = "".join("        location = %s { return 403; }\n" % json.dumps(p)
                         for p in self.forbid)
        tls = ("        ssl_certificate %s;\n        ssl_certificate_key %s;\n" % (
            json.dumps(self.ca_file), json.dumps(os.path.join(self.scratch, "key.pem")))
               if self.tls else "")
        conf = _NGINX_CONF.format(scratch=self.scratch, port=self.port, root=json.dumps(self.root),
                                  limit_rate=self.limit_rate, forbid=forbid,
                                  ssl=" ssl" if self.tls else "", tls=tls,
                                  autoindex="on" if self.autoindex else "off")
        path = os.path.join(self.scratch, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        return path

    def start(self, timeout=START_TIMEOUT_S):
        if missing_programs("nginx"):
            raise ServerError("nginx is not installed (%s); scripts/deps.sh install_servers"
                              % ", ".join(missing_programs("nginx")))
        if not os.path.isdir(self.root):
            raise ServerError("nginx: %s is not a directory" % self.root)
        self._open("apb-nginx-")
        fixed_port = self.port is not None
        try:
            os.makedirs(os.path.join(self.scratch, "tmp"), exist_ok=True)
            if self.tls:
                self._make_cert()
            for attempt in range(5):
                if not fixed_port:
                    self.port = free_port()
                conf = self._write_conf()
                self.daemon = Daemon("nginx", [NGINX_BIN, "-p", self.scratch, "-c", conf,
                                               "-e", os.path.join(self.scratch, "error.log")],
                                     os.path.join(self.scratch, "nginx.out"))
                try:
                    wait_for(lambda: http_ready(self.port, "x-apb-nginx", tls=self.tls), timeout,
                             "nginx to answer on 127.0.0.1:%d" % self.port,
                             alive=self.daemon.alive)
                    return self
                except ServerError as e:
                    out = tail(os.path.join(self.scratch, "error.log"))
                    self.daemon.stop()
                    self.daemon = None
                    if fixed_port or "Address already in use" not in out or attempt == 4:
                        raise ServerError("%s\n---- nginx error.log:\n%s" % (e, out)) from None
        except BaseException:
            self.close()
            raise

    def stop(self):
        """Stop nginx (bounded); the scratch dir stays for a start() again
        until close()."""
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def kill(self):
        if self.daemon is not None:
            self.daemon.kill()
            self.daemon = None

    def access_log(self):
        """The access log's lines (`$request $status $bytes "$range" ...`)."""
        try:
            with open(os.path.join(self.scratch, "access.log")) as f:
                return f.read().splitlines()
        except OSError:
            return []

    def info(self):
        return {"server": "nginx", "endpoint": self.endpoint, "root": self.root,
                "ca_file": self.ca_file,
                "limit_rate": self.limit_rate, "pid": self.daemon.pid if self.daemon else None,
                "scratch": self.scratch}



# --------------------------------------------------------------------------
# Ceph RADOS Gateway

_CEPH_CONF = """\
[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon_port}]
mon initial members = a
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
# with auth none, clients would otherwise ask for secure mode and hang
ms mon client mode = crc
run dir = {d}/run
admin socket = {d}/run/$name.asok
crash dir = {d}/crash
log file = {d}/log/$name.log
log to stderr = false
err to stderr = true
mon cluster log file = {d}/log/cluster.log
keyring = {d}/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon data avail warn = 1
mon warn on insecure global id reclaim allowed = false
mon warn on insecure global id reclaim = false
mon warn on pool no redundancy = false

[mon]
mon data = {d}/mon/$id
# pools are made in ~10 ms instead of ~2 s each
paxos propose interval = 0.01
paxos min wait = 0.001

[osd]
osd data = {d}/osd/$id
osd objectstore = memstore
# a PUT past this hangs (see docs/TESTING.md): size it above the test data
memstore device bytes = {memstore_bytes}
osd max object size = 1073741824

[mgr]
mgr data = {d}/mgr/$id

[client]
ms mon client mode = crc

[client.rgw.a]
# tcp_nodelay: without it every answer after the first on a kept-alive
# connection waits 40 ms (headers and body sent apart: Nagle meets delayed ACK)
rgw frontends = beast endpoint=127.0.0.1:{rgw_port} tcp_nodelay=1
rgw data = {d}/rgw
rgw enable usage log = false
rgw enable ops log = false
rgw init timeout = 60
# the lifecycle threads sleep 5 s on a lock and hold up a SIGTERM that long
rgw enable lc threads = false
# space of overwritten or deleted objects comes back within seconds, not
# the default 2 hours (memstore is RAM)
rgw gc obj min wait = 2
rgw gc processor period = 5
"""


class Rgw(_Server):
    """A single-node Ceph RADOS Gateway on 127.0.0.1 with a user (ACCESS_KEY,
    SECRET_KEY) and a bucket. memstore_bytes caps the OSD's in-memory store
    (keep test data well below it: a full memstore hangs PUTs)."""

    def __init__(self, memstore_bytes=1 << 30, bucket=BUCKET, access_key=ACCESS_KEY,
                 secret_key=SECRET_KEY, mgr=False, scratch=None):
        self.memstore_bytes = int(memstore_bytes)
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = REGION
        self.mgr = mgr
        self._own_scratch = scratch is None
        self.scratch = scratch
        self.daemons = {}
        self.port = None
        self.start_seconds = None

    # paths and tools

    @property
    def conf(self):
        return os.path.join(self.scratch, "ceph.conf")

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.port

    def url(self, key="", bucket=None):
        return "%s/%s/%s" % (self.endpoint, bucket or self.bucket,
                             urllib.parse.quote(key.lstrip("/")))

    def env(self):
        env = dict(os.environ)
        env["CEPH_CONF"] = self.conf
        return env

    def ceph(self, *args, timeout=CEPH_CMD_TIMEOUT_S, json_out=False):
        argv = ["ceph", "-c", self.conf, "--connect-timeout", str(int(timeout))] + list(args)
        if json_out:
            argv += ["-f", "json"]
        r = run_tool(argv, timeout=timeout + 5, env=self.env())
        return json.loads(r.stdout) if json_out else r.stdout.decode()

    def radosgw_admin(self, *args, timeout=CEPH_CMD_TIMEOUT_S):
        r = run_tool(["radosgw-admin", "-c", self.conf] + list(args), timeout=timeout,
                     env=self.env())
        return r.stdout.decode()

    def _daemon(self, name, argv):
        d = Daemon(name, argv + ["-c", self.conf],
                   os.path.join(self.scratch, "log", "%s.out" % name), env=self.env())
        self.daemons[name] = d
        return d

    def _write_conf(self, mon_port, rgw_port):
        with open(self.conf, "w") as f:
            f.write(_CEPH_CONF.format(fsid=uuid.uuid4(), d=self.scratch, mon_port=mon_port,
                                      rgw_port=rgw_port, memstore_bytes=self.memstore_bytes))

    # start / stop

    def start(self, timeout=RGW_START_TIMEOUT_S):
        missing = missing_programs("rgw")
        if missing:
            raise ServerError("Ceph RGW is not installed (%s); scripts/deps.sh install_servers"
                              % ", ".join(missing))
        t0 = time.monotonic()
        deadline = t0 + timeout

        def left():
            return max(1.0, deadline - time.monotonic())

        # on tmpfs where there is one: the mon's store syncs every map
        # change, which a busy disk turns from milliseconds into seconds
        self._open("apb-rgw-", "/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
        try:
            for sub in ("run", "crash", "log", "mon/a", "osd/0", "rgw", "mgr/x"):
                os.makedirs(os.path.join(self.scratch, sub), exist_ok=True)
            mon_port, self.port = free_port(), free_port()
            while self.port == mon_port:
                self.port = free_port()
            self._write_conf(mon_port, self.port)
            monmap = os.path.join(self.scratch, "monmap")
            run_tool(["monmaptool", "--create", "--clobber", "--fsid", self._fsid(),
                      "--addv", "a", "[v2:127.0.0.1:%d]" % mon_port, monmap])
            run_tool(["ceph-mon", "-c", self.conf, "--mkfs", "-i", "a", "--monmap", monmap],
                     env=self.env())
            mon = self._daemon("mon", ["ceph-mon", "-f", "-i", "a"])
            wait_for(lambda: port_open(mon_port), left(), "ceph-mon on 127.0.0.1:%d" % mon_port,
                     alive=mon.alive)
            osd_uuid = str(uuid.uuid4())
            osd_id = self.ceph("osd", "new", osd_uuid, timeout=min(left(), 30)).strip()
            if osd_id != "0":
                raise ServerError("ceph osd new gave id %r, expected 0" % osd_id)
            self.ceph("osd", "crush", "add", "osd.0", "1.0", "host=localhost", "root=default")
            run_tool(["ceph-osd", "-c", self.conf, "--mkfs", "-i", "0", "--osd-uuid", osd_uuid],
                     env=self.env(), timeout=min(left(), 60))
            osd = self._daemon("osd", ["ceph-osd", "-f", "-i", "0"])
            wait_for(lambda: self.ceph("osd", "stat", json_out=True).get("num_up_osds") == 1,
                     left(), "osd.0 up", interval=0.2, alive=osd.alive)
            if self.mgr:
                self._daemon("mgr", ["ceph-mgr", "-f", "-i", "x"])
            rgw = self._daemon("radosgw", ["radosgw", "-f", "-n", "client.rgw.a"])
            wait_for(lambda: http_ready(self.port, "x-amz-request-id"), left(),
                     "radosgw on 127.0.0.1:%d" % self.port, interval=0.1, alive=rgw.alive)
            self.radosgw_admin("user", "create", "--uid", "apb", "--display-name", "apb tests",
                               "--access-key", self.access_key, "--secret", self.secret_key)
            rc, status, _, body = self.request("PUT", "", timeout=left())
            if status != 200:
                raise ServerError("creating bucket %s: curl exit %d, HTTP %d %s"
                                  % (self.bucket, rc, status, body[:500]))
            self.start_seconds = time.monotonic() - t0
            return self
        except BaseException as e:
            logs = "\n".join(d.log_tail() for d in self.daemons.values())
            logs += "\n---- cluster log:\n" + tail(os.path.join(self.scratch, "log", "cluster.log"))
            for name in ("client.rgw.a", "osd.0", "mon.a"):
                logs += "\n---- %s.log:\n%s" % (
                    name, tail(os.path.join(self.scratch, "log", name + ".log"), 15))
            self.close()
            if isinstance(e, ServerError):
                raise ServerError("RGW did not start: %s\n%s" % (e, logs)) from None
            raise

    def _fsid(self):
        with open(self.conf) as f:
            for line in f:
                if line.startswith("fsid = "):
                    return line.split("=", 1)[1].strip()
        raise ServerError("no fsid in %s" % self.conf)

    def stop_rgw(self):
        """Stop only radosgw (the S3 endpoint goes away, the store stays)."""
        d = self.daemons.pop("radosgw", None)
        if d is not None:
            d.stop()

    def start_rgw(self, timeout=60.0):
        """Start radosgw again on the same port after stop_rgw()."""
        rgw = self._daemon("radosgw", ["radosgw", "-f", "-n", "client.rgw.a"])
        wait_for(lambda: http_ready(self.port, "x-amz-request-id"), timeout,
                 "radosgw on 127.0.0.1:%d" % self.port, interval=0.1, alive=rgw.alive)

    def stop(self):
        # the gateway first (it would block on a missing OSD), the mon last
        for name in ("radosgw", "mgr", "osd", "mon"):
            d = self.daemons.pop(name, None)
            if d is not None:
                d.stop()

    def pids(self):
        return {name: d.pid for name, d in self.daemons.items()}

    # S3 through curl's SigV4

    def sigv4_args(self, access_key=None, secret_key=None):
        """curl arguments that sign a request for this gateway. Debian's
        curl 7.88 signs a payload hash it does not send: the header makes
        both sides hash nothing."""
        return ["--aws-sigv4", "aws:amz:%s:s3" % self.region,
                "--user", "%s:%s" % (access_key or self.access_key, secret_key or self.secret_key),
                "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]

    def request(self, method, key, headers=None, data_file=None, access_key=None,
                secret_key=None, bucket=None, endpoint=None, timeout=120.0, extra=()):
        """A signed S3 request; (curl exit, HTTP status, headers, body).
        endpoint: send it elsewhere (a FaultProxy in front) with the same
        signature inputs."""
        url = self.url(key, bucket)
        if endpoint:
            url = endpoint.rstrip("/") + url[len(self.endpoint):]
        return curl(url, *self.sigv4_args(access_key, secret_key), *extra, method=method,
                    headers=headers, data_file=data_file, timeout=timeout)

    def put_object(self, key, path=None, data=None, bucket=None):
        """Upload a file (or bytes) as key; returns the ETag. The data must
        fit well inside memstore_bytes."""
        with contextlib.ExitStack() as stack:
            if data is not None:
                tmp = stack.enter_context(tempfile.NamedTemporaryFile(prefix="apb-put-"))
                tmp.write(data)
                tmp.flush()
                path = tmp.name
            size = os.path.getsize(path)
            rc, status, hdrs, body = self.request("PUT", key, data_file=path, bucket=bucket,
                                                  timeout=60.0 + size / 20e6)
        if status != 200 or rc != 0:
            raise ServerError("PUT %s: curl exit %d, HTTP %d %s %s" % (
                key, rc, status, hdrs.get("x-curl-error", ""), body[:500]))
        return hdrs.get("etag")

    def delete_object(self, key, bucket=None):
        rc, status, _, body = self.request("DELETE", key, bucket=bucket)
        if status not in (200, 204):
            raise ServerError("DELETE %s: curl exit %d, HTTP %d %s" % (key, rc, status, body[:500]))

    def info(self):
        return {"server": "rgw", "endpoint": self.endpoint, "region": self.region,
                "bucket": self.bucket, "access_key": self.access_key,
                "secret_key": self.secret_key, "start_seconds": round(self.start_seconds, 2),
                "pids": self.pids(), "scratch": self.scratch}


# --------------------------------------------------------------------------
# fault-injecting proxy

class _Fault:
    def __init__(self, kind, count, **args):
        self.kind = kind
        self.left = count        # None: until cleared
        self.args = args


class ProxyRequest:
    """What the proxy saw of one request."""

    def __init__(self, method, path, headers, connection):
        self.method = method
        self.path = path
        self.headers = headers          # lower-cased names
        self.range = headers.get("range")
        self.connection = connection    # serial number of the client connection
        self.fault = None               # the fault applied, if any

    def __repr__(self):
        return "<%s %s range=%s conn=%d fault=%s>" % (self.method, self.path, self.range,
                                                      self.connection, self.fault)


class _Closed(Exception):
    pass


def _read_head(rfile, limit=65536):
    """Read an HTTP message head; (first line, [(name, value)], raw bytes),
    or None at a clean EOF before any byte."""
    raw = b""
    while True:
        line = rfile.readline(limit)
        if not line:
            if raw:
                raise _Closed("EOF inside a message head")
            return None
        if not raw and line in (b"\r\n", b"\n"):
            continue                    # tolerated between messages
        raw += line
        if line in (b"\r\n", b"\n"):
            break
        if len(raw) > limit:
            raise _Closed("message head too long")
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers.append((k.strip().lower(), v.strip()))
    return lines[0], headers, raw


def _hget(headers, name, default=None):
    for k, v in headers:
        if k == name:
            return v
    return default


def _unsent_bytes(sock):
    """Bytes the kernel has not had acknowledged yet on sock (SIOCOUTQ)."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return struct.unpack("i", buf)[0]


class _ProxyHandler(socketserver.BaseRequestHandler):
    def handle(self):
        proxy = self.server.proxy
        conn_no = proxy._new_connection()
        client = self.request
        rfile = client.makefile("rb")
        upstream = urf = None
        try:
            while True:
                head = _read_head(rfile)
                if head is None:
                    return
                start, headers, raw = head
                parts = start.split(" ")
                if len(parts) != 3:
                    return
                method, path, _ = parts
                req = ProxyRequest(method, path, dict(headers), conn_no)
                fault = proxy._take_fault(req)
                length = int(_hget(headers, "content-length", "0") or 0)
                if fault is not None and fault.kind == "status":
                    if length:
                        rfile.read(length)      # the request body goes nowhere
                    self._send_status(client, fault.args["code"], method)
                    continue
                if upstream is None:
                    upstream = socket.create_connection(proxy.upstream_addr, timeout=120)
                    urf = upstream.makefile("rb")
                upstream.sendall(raw)
                resp = None
                if length:
                    if _hget(headers, "expect", "").lower() == "100-continue":
                        resp = _read_head(urf)
                        if resp is None:
                            raise _Closed("upstream closed")
                        if resp[0].split(" ")[1] == "100":
                            client.sendall(resp[2])
                            resp = None
                    if resp is None:
                        left = length
                        while left:
                            chunk = rfile.read(min(left, 1 << 16))
                            if not chunk:
                                raise _Closed("client closed inside a body")
                            upstream.sendall(chunk)
                            left -= len(chunk)
                if resp is None:
                    resp = _read_head(urf)
                    while resp is not None and resp[0].split(" ")[1] == "100":
                        client.sendall(resp[2])
                        resp = _read_head(urf)
                    if resp is None:
                        raise _Closed("upstream closed before a response")
                if not self._relay(client, urf, method, resp, fault, proxy):
                    return
                if (_hget(resp[1], "connection", "").lower() == "close" or
                        _hget(headers, "connection", "").lower() == "close"):
                    return
        except (_Closed, OSError):
            return
        finally:
            for f in (rfile, urf, upstream):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()

    def _send_status(self, client, code, method):
        reason = {404: "Not Found", 403: "Forbidden", 416: "Range Not Satisfiable",
                  500: "Internal Server Error", 503: "Service Unavailable"}.get(code, "Fault")
        body = b"" if method == "HEAD" else ("fault proxy: %d\n" % code).encode()
        extra = "Content-Range: bytes */0\r\n" if code == 416 else ""
        client.sendall(("HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n%s"
                        "Content-Length: %d\r\n\r\n" % (code, reason, extra, len(body))).encode()
                       + body)

    def _relay(self, client, urf, method, resp, fault, proxy):
        """Forward one response, applying fault; False: the client
        connection is finished."""
        start, headers, raw = resp
        code = int(start.split(" ")[1])
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.args["seconds"])
        client.sendall(raw)
        if method == "HEAD" or code in (204, 304) or 100 <= code < 200:
            return True
        chunked = "chunked" in _hget(headers, "transfer-encoding", "").lower()
        length = _hget(headers, "content-length")
        cut = None
        if fault is not None and fault.kind in ("reset", "truncate"):
            cut = fault.args["after"]
        sent = 0

        def send(data):
            nonlocal sent
            if cut is not None and sent + len(data) >= cut:
                client.sendall(data[:cut - sent])
                sent = cut
                self._cut(client, fault.kind)
                return False
            client.sendall(data)
            sent += len(data)
            return True

        if chunked:
            while True:
                line = urf.readline(1024)
                if not line:
                    raise _Closed("upstream closed inside a chunked body")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                data = line + (urf.read(size + 2) if size else b"")
                if not send(data):
                    return False
                if size == 0:
                    while True:         # trailers up to the empty line
                        t = urf.readline(1024)
                        if not send(t) or t in (b"\r\n", b"\n", b""):
                            break
                    return True
        elif length is not None:
            left = int(length)
            if cut is not None and cut >= left:
                cut = None          # nothing to cut: the whole body passes
            while left:
                chunk = urf.read(min(left, 1 << 16))
                if not chunk:
                    raise _Closed("upstream closed inside a body")
                left -= len(chunk)
                if not send(chunk):
                    return False
            return True
        while True:                      # body until the upstream closes
            chunk = urf.read1(1 << 16)
            if not chunk:
                return False
            if not send(chunk):
                return False

    def _cut(self, client, kind):
        if kind == "truncate":
            # FIN after fewer bytes than announced
            client.shutdown(socket.SHUT_WR)
            return
        # RST, once the client has every byte sent so far (a reset would
        # otherwise let the client's kernel drop data already in flight)
        deadline = time.monotonic() + 5.0
        while _unsent_bytes(client) and time.monotonic() < deadline:
            time.sleep(0.002)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # the descriptor goes when handle() closes its reader, with an RST
        # (socketserver's own shutdown(SHUT_WR) would send a FIN first)
        client.close()


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 (or host) in front of `upstream` (an http URL
    or host:port), forwarding requests unchanged (a SigV4 signature, made
    for the proxy's Host, stays valid: the Host header passes as it is),
    keeping connections alive as the client does.

    Faults, each for the next `count` requests (None: until clear()):
      reset_after(n)      n body bytes, then a TCP reset
      truncate_after(n)   n body bytes, then a clean close (fewer bytes than
                          Content-Length)
      delay(seconds)      wait before sending the response
      status(code)        answer code itself, without asking the server
    requests (ProxyRequest list: method, path, range, connection) and
    connections count what passed, for tests of coalescing and reuse."""

    def __init__(self, upstream, port=0, host="127.0.0.1"):
        u = urllib.parse.urlsplit(upstream if "//" in upstream else "http://" + upstream)
        self.upstream_addr = (u.hostname, u.port or 80)
        self._host = host       # another address: a benchmark's veth end
        self._port = port
        self._lock = threading.Lock()
        self._faults = []
        self.requests = []
        self.connections = 0
        self._server = self._thread = None

    @property
    def port(self):
        return self._server.server_address[1]

    @property
    def endpoint(self):
        return "http://%s:%d" % (self._host, self.port)

    def start(self):
        self._server = _ProxyServer((self._host, self._port), _ProxyHandler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(STOP_TIMEOUT_S)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # faults

    def _add(self, kind, count, **args):
        if count is not None and count < 1:
            raise ValueError("count must be >= 1 or None")
        with self._lock:
            self._faults.append(_Fault(kind, count, **args))

    def reset_after(self, nbytes, count=None):
        self._add("reset", count, after=int(nbytes))

    def truncate_after(self, nbytes, count=None):
        self._add("truncate", count, after=int(nbytes))

    def delay(self, seconds, count=None):
        self._add("delay", count, seconds=float(seconds))

    def status(self, code, count=1):
        self._add("status", count, code=int(code))

    def clear(self):
        """Back to pass-through."""
        with self._lock:
            self._faults.clear()

    def reset_counts(self):
        with self._lock:
            self.requests = []
            self.connections = 0

    def ranges(self):
        with self._lock:
            return [r.range for r in self.requests]

    def _new_connection(self):
        with self._lock:
            self.connections += 1
            return self.connections

    def _take_fault(self, req):
        # faults apply in the order they were set; a spent one goes away
        with self._lock:
            self.requests.append(req)
            if not self._faults:
                return None
            f = self._faults[0]
            if f.left is not None:
                f.left -= 1
                if f.left == 0:
                    self._faults.pop(0)
            req.fault = f.kind
            return f

    def info(self):
        return {"server": "proxy", "endpoint": self.endpoint,
                "upstream": "%s:%d" % self.upstream_addr}


# --------------------------------------------------------------------------
# command line

def _serve(server):
    """Print server.info() as one JSON line; block until SIGINT/SIGTERM."""
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    with server:
        print(json.dumps(server.info()), flush=True)
        while not stop.wait(0.5):
            pass


def main(argv=None):
    p = argparse.ArgumentParser(prog="servers.py", description=__doc__.split("\n\n")[0],
                                epilog="Prints one JSON line when ready; stops everything "
                                       "on SIGINT/SIGTERM.")
    sub = p.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("nginx", help="serve DIR over HTTP with nginx")
    n.add_argument("dir")
    n.add_argument("--limit-rate", type=int, default=0, metavar="BYTES",
                   help="bytes/s per response (default 0: unlimited)")
    n.add_argument("--forbid", action="append", default=[], metavar="PATH",
                   help="URL path answered with 403 (repeatable)")
    n.add_argument("--port", type=int, help="default: a free one")
    n.add_argument("--tls", action="store_true",
                   help="HTTPS with a self-signed certificate (its file: ca_file in the JSON)")
    r = sub.add_parser("rgw", help="a single-node Ceph RADOS Gateway (S3)")
    r.add_argument("--memstore-bytes", type=int, default=1 << 30,
                   help="the OSD's in-memory store size (default 1 GiB)")
    r.add_argument("--bucket", default=BUCKET)
    r.add_argument("--mgr", action="store_true", help="also run a ceph-mgr (not needed for S3)")
    x = sub.add_parser("proxy", help="a fault-injecting proxy (pass-through) in front of URL")
    x.add_argument("upstream")
    x.add_argument("--port", type=int, default=0)
    a = p.parse_args(argv)
    try:
        if a.cmd == "nginx":
            _serve(Nginx(a.dir, limit_rate=a.limit_rate, forbid=a.forbid, port=a.port,
                         tls=a.tls))
        elif a.cmd == "rgw":
            _serve(Rgw(memstore_bytes=a.memstore_bytes, bucket=a.bucket, mgr=a.mgr))
        else:
            _serve(FaultProxy(a.upstream, port=a.port))
    except ServerError as e:
        print("servers.py: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
