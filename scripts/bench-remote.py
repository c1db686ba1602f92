#!/usr/bin/python3
"""scripts/bench-remote.py - apbundlefs mounting a bundle from nginx and from
a Ceph RGW over an emulated network link, against curl and `rclone mount`
(issue 16's benchmark). Run as root from a built tree (ninja -C build):

    /usr/bin/python3 scripts/bench-remote.py           # 1 GiB model, 3 runs (~10 min)
    QUICK=1 /usr/bin/python3 scripts/bench-remote.py   # 16 MiB, 1 run, no RGW (~30 s)

The whole script runs in a network namespace of its own (unshare), so the
link it shapes is its own loopback and nothing of it outlives it. Servers
(scripts/servers.py: nginx serving BENCH_DIR/www with autoindex on, and a
Ceph RGW with the same bundles uploaded) listen there on 127.0.0.1. Links:

  shaped    through scripts/benchsrc/delayproxy.c, which holds every byte
            RTT_MS/2 in each direction (and a new connection one RTT, its
            handshake), with an htb qdisc on lo limiting the proxy's port to
            LINK_MBPS MB/s (this kernel has no netem; docs/PERFORMANCE.md)
  loopback  straight to the server, unlimited

Contenders, all on the same link and the same object:
  curl          curl -o /dev/null of the bundle (or, for loads, curl -o a
                local file, then the load from it: download-then-read)
  apbundlefs    the bundle mounted by URL (http:// from nginx, s3:// from
                RGW), a fresh mount (empty cache) per run
  rclone        rclone mount of nginx's directory (http backend,
                --vfs-cache-mode full, an empty --cache-dir per run)
  native        the model file on local disk (BENCH_DIR), page cache dropped

Cases: seq (cold sequential read of the model with 1 MiB reads, and the
whole download for curl; the mount's own time is counted apart), ttfb (from
starting the client to the first 4 KiB of the model in the reader's
hands, the mount included), torch (torch.load of a state dict of TORCH_MIB
the script writes, in a process that imported torch before the clock
starts; mount or download included), tier (a warm read from apbundlefs's
disk tier, -o cache_dir=, against a cold native read from the same disk;
skipped with a message by a daemon that does not know cache_dir=; the
bundle mounted from its local file on the same disk, cold, is shown beside
them: what apbundlefs reads from that disk at best), pipeline (on the
shaped link: curl, build/tools/apbfetch reading the bundle in 1 MiB
requests from 4 threads and in 8 MiB requests from 2, and apbundlefs with
1, 2 and 4 threads each reading its part of the model: how much of a miss
is the single stream's pipeline). Before
every run the page cache is dropped, then the server's copy is read once
so that the server answers from memory (the link is measured, not this
machine's disk). Every read is checked: byte count, and the bytes against
the source (cmp, after the clock stops); torch loads by a digest of every
tensor.

Environment: QUICK=1; RUNS (3; QUICK 1); MODEL_MIB (1024; QUICK 16);
TORCH_MIB (256; QUICK 8); LINK_MBPS (500); RTT_MS (1); RGW (1; QUICK 0:
RGW's start takes ~20 s); RCLONE (0: leave rclone out); CASES (default
"seq ttfb torch tier pipeline"); LINKS (the seq case's, default "shaped loopback");
APB_OPTS (more -o options for every apbundlefs mount, for exploring:
e.g. readahead=16M);
BENCH_DIR (/var/tmp/apb-bench-remote, -quick for QUICK); OUT
(docs/bench/remote; QUICK: BENCH_DIR/out); APB_BUILD (build).
Writes OUT/results.md, OUT/results.json, OUT/remote.png.
"""
import contextlib
import ctypes
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchlib import (log, MIB, PACKER, DAEMON, ROOT, Mount, close_mounts, drop_caches,
                      machine_summary, median, read_seq, source_tree, start)

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import servers  # noqa: E402

QUICK = os.environ.get("QUICK") == "1"


def env_num(name, full, quick, conv=int):
    v = os.environ.get(name)
    return conv(v) if v else quick if QUICK else full


RUNS = env_num("RUNS", 3, 1)
MODEL_MIB = env_num("MODEL_MIB", 1024, 16)
TORCH_MIB = env_num("TORCH_MIB", 256, 8)
LINK_MBPS = env_num("LINK_MBPS", 500, 500, float)
RTT_MS = env_num("RTT_MS", 1.0, 1.0, float)
USE_RGW = env_num("RGW", 1, 0) == 1
CASES = os.environ.get("CASES", "seq ttfb torch tier pipeline").replace(",", " ").split()
LINKS = os.environ.get("LINKS", "shaped loopback").replace(",", " ").split()
APB_OPTS = os.environ.get("APB_OPTS", "")
BENCH_DIR = os.environ.get("BENCH_DIR", "/var/tmp/apb-bench-remote" + ("-quick" if QUICK else ""))
OUT = os.environ.get("OUT") or (os.path.join(BENCH_DIR, "out") if QUICK else
                                os.path.join(ROOT, "docs", "bench", "remote"))
PYTHON = "/usr/bin/python3"     # Debian's: it sees python3-torch
RCLONE = None if os.environ.get("RCLONE") == "0" else shutil.which("rclone")

# issue 16's targets
TARGET_SHAPED_VS_CURL = 0.9
TARGET_LOOP_VS_RCLONE = 1.5
TARGET_TIER_VS_NATIVE = 0.7


def run(argv, **kw):
    return subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, **kw)


# ---------------------------------------------------------------- the link

CLONE_NEWNET = 0x40000000


def own_network():
    """Move this process (and so everything it starts) into a new network
    namespace with only lo, up: the qdisc below shapes nothing of the
    machine's, and the namespace goes when the last process in it does."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        sys.exit(f"bench-remote: unshare(CLONE_NEWNET): {os.strerror(e)}")
    run(["ip", "link", "set", "lo", "up"])


class Link:
    """The shaped link: delayproxy on 127.0.0.1:port in front of an upstream
    port, its traffic (both ways) limited by an htb class on lo. One per
    server; close() stops the proxy (the qdisc goes with the namespace)."""

    qdisc = False

    def __init__(self, proxy_bin, upstream_port, logdir):
        self.daemon = servers.Daemon("delayproxy", [proxy_bin, "0", str(upstream_port),
                                                    str(int(RTT_MS * 1000))],
                                     os.path.join(logdir, f"delayproxy-{upstream_port}.log"))
        self.port = servers.wait_for(self._ready, 10, "delayproxy to listen",
                                     alive=self.daemon.alive)
        rate = f"{int(LINK_MBPS * 8)}mbit"
        if not Link.qdisc:
            run(["tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb"])
            # a burst of 256 KiB: at 500 MB/s, half a millisecond of line
            # rate, so the limit holds at the scale of one round trip
            run(["tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb",
                 "rate", rate, "ceil", rate, "burst", "256k", "cburst", "256k",
                 "quantum", "200000"])
            Link.qdisc = True
        for field in ("sport", "dport"):
            run(["tc", "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip",
                 "prio", "1", "u32", "match", "ip", field, str(self.port), "0xffff",
                 "flowid", "1:10"])

    def _ready(self):
        try:
            with open(self.daemon.log_path) as f:
                words = f.read().split()
        except OSError:
            return None
        return int(words[1]) if len(words) >= 2 and words[0] == "ready" else None

    def close(self):
        self.daemon.stop()


def build_proxy(bindir):
    os.makedirs(bindir, exist_ok=True)
    out = os.path.join(bindir, "delayproxy")
    run(["cc", "-std=c11", "-O2", "-Wall", "-Wextra", "-pthread", "-o", out,
         os.path.join(ROOT, "scripts", "benchsrc", "delayproxy.c")])
    return out


# ---------------------------------------------------------------- data

TORCH_WRITE = r"""
import sys, torch, hashlib
path, mib = sys.argv[1], int(sys.argv[2])
g = torch.Generator().manual_seed(7)
sd = {}
# transformer-like: per layer four square matrices and two vectors, float32
dim = 1024 if mib >= 64 else 256
per_layer = 4 * dim * dim * 4
for i in range(max(1, mib * (1 << 20) // per_layer)):
    for n in ("q", "k", "v", "o"):
        sd[f"layers.{i}.{n}.weight"] = torch.randn(dim, dim, generator=g)
    sd[f"layers.{i}.norm.weight"] = torch.ones(dim)
    sd[f"layers.{i}.norm.bias"] = torch.zeros(dim)
torch.save(sd, path)
"""

# Imports torch, says "ready", then loads the path it is given on stdin
# and prints the seconds the load took and a digest of every tensor.
TORCH_LOAD = r"""
import sys, time, hashlib, torch
print("ready", flush=True)
path = sys.stdin.readline().strip()
t0 = time.perf_counter()
sd = torch.load(path, map_location="cpu")
dt = time.perf_counter() - t0
h = hashlib.sha1()
for k in sorted(sd):
    h.update(k.encode()); h.update(sd[k].numpy().tobytes())
print(dt, h.hexdigest(), flush=True)
"""


def torch_available():
    r = subprocess.run([PYTHON, "-c", "import torch"], capture_output=True, text=True)
    return None if r.returncode == 0 else \
        "python3-torch is not installed (scripts/deps.sh install_bench_remote)"


def make_data(datadir):
    """The model (random bytes) and, with torch, a state dict, each in a
    folder of its own, kept between runs of the same sizes."""
    stamp = {"v": 1, "model_mib": MODEL_MIB, "torch_mib": TORCH_MIB}
    stamp_path = os.path.join(datadir, "stamp.json")
    try:
        with open(stamp_path) as f:
            fresh = json.load(f) != stamp
    except (OSError, ValueError):
        fresh = True
    model_dir, torch_dir = os.path.join(datadir, "model"), os.path.join(datadir, "torch")
    if fresh:
        log("making the data in", datadir)
        shutil.rmtree(datadir, ignore_errors=True)
        os.makedirs(model_dir)
        os.makedirs(torch_dir)
        with open(os.path.join(model_dir, "model"), "wb") as f:
            for _ in range(MODEL_MIB):
                f.write(os.urandom(MIB))
        if torch_available() is None:
            run([PYTHON, "-c", TORCH_WRITE, os.path.join(torch_dir, "model.pt"),
                 str(TORCH_MIB)])
        with open(stamp_path, "w") as f:
            json.dump(stamp, f)
    return model_dir, torch_dir


def torch_digest(path):
    """The digest TORCH_LOAD prints for the state dict at path."""
    p = TorchLoader()
    try:
        return p.load(path)[1]
    finally:
        p.close()


# ---------------------------------------------------------------- clients

def mount_apb(url, mnt, logdir, opts=""):
    o = ",".join(x for x in ("max_memory=256M", APB_OPTS, opts) if x)
    return Mount([DAEMON, "-f", "-o", o, url, mnt], mnt, logdir)


@contextlib.contextmanager
def rclone_mounted(b, link):
    """rclone mount of nginx's directory over link, with an empty cache dir
    of its own (removed after): yields the Mount (its mnt, mount_seconds)."""
    cache = tempfile.mkdtemp(prefix="rclone-", dir=b.work)
    mnt = os.path.join(b.mntdir, "rclone")
    try:
        m = Mount([RCLONE, "mount", ":http:", mnt, "--http-url",
                   b.endpoint("nginx", link) + "/", "--read-only",
                   "--vfs-cache-mode", "full", "--cache-dir", cache, "--config",
                   os.path.join(cache, "rclone.conf"), "--log-level", "ERROR"],
                  mnt, b.logdir)
        try:
            yield m
        finally:
            m.close()
    finally:
        shutil.rmtree(cache, ignore_errors=True)


class TorchLoader:
    """A python3 that has imported torch and waits for a path to load."""

    def __init__(self):
        self.p = subprocess.Popen([PYTHON, "-c", TORCH_LOAD], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        if self.p.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError("the torch loader did not start")

    def load(self, path):
        self.p.stdin.write(path + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline().split()
        self.p.wait(timeout=600)
        if self.p.returncode != 0 or len(line) != 2:
            raise RuntimeError(f"torch.load({path}) failed (exit {self.p.returncode})")
        return float(line[0]), line[1]

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def read_first(path, n=4096):
    with open(path, "rb") as f:
        data = f.read(n)
    if len(data) != n:
        raise RuntimeError(f"{path}: first read gave {len(data)} bytes, expected {n}")
    return data


def curl_argv(url, s3=None):
    argv = ["curl", "-sS", "--fail", "-g"]
    if s3 is not None:
        argv += s3.sigv4_args()
    return argv + [url]


# ---------------------------------------------------------------- the run

class Bench:
    def __init__(self, work):
        self.work = work
        self.logdir = os.path.join(work, "logs")
        self.mntdir = os.path.join(work, "mnt")
        os.makedirs(self.logdir, exist_ok=True)
        os.makedirs(self.mntdir, exist_ok=True)
        self.rows = {}          # (case, link, contender) -> {"runs": [...], ...}
        self.notes = {}         # case -> why skipped
        self.servers = {}       # "nginx" | "rgw" -> {"server", "links": {link: endpoint}}

    def add(self, case, link, who, value, **extra):
        r = self.rows.setdefault((case, link, who), {"runs": []})
        r["runs"].append(value)
        for k, v in extra.items():
            r.setdefault(k, []).append(v)

    def endpoint(self, server, link):
        return self.servers[server]["links"][link]

    def url(self, server, link, name):
        if server == "nginx":
            return f"{self.endpoint('nginx', link)}/{name}"
        s3 = self.servers["rgw"]["server"]
        return f"{self.endpoint('rgw', link)}/{s3.bucket}/{name}"

    def apb_url(self, server, link, name):
        """What apbundlefs is given, and its extra -o options."""
        if server == "nginx":
            return self.url("nginx", link, name), ""
        s3 = self.servers["rgw"]["server"]
        return (f"s3://{s3.bucket}/{name}",
                f"s3_endpoint={self.endpoint('rgw', link)},s3_region={s3.region}")

    def warm_server(self, name):
        """Cold client, warm server: drop the page cache, then read the
        server's copy once (nginx's file; RGW keeps objects in memory)."""
        drop_caches()
        with open(os.path.join(self.www, name), "rb") as f:
            while f.read(8 * MIB):
                pass

    def nginx_requests(self):
        return len(self.servers["nginx"]["server"].access_log())


def stats_remote(m):
    try:
        return m.stats().get("remote", {})
    except (OSError, ValueError):
        return {}


def case_seq(b, model_src, model_size, bundle_name):
    """Cold sequential read over each link by each contender."""
    links = LINKS
    servers_ = ["nginx"] + (["rgw"] if "rgw" in b.servers else [])
    for i in range(RUNS):
        for link in links:
            for server in servers_:
                who = f"curl {server}"
                b.warm_server(bundle_name)
                n0 = b.nginx_requests()
                t0 = time.perf_counter()
                run(curl_argv(b.url(server, link, bundle_name),
                              b.servers[server]["server"] if server == "rgw" else None)
                    + ["-o", "/dev/null"])
                b.add("seq", link, who, time.perf_counter() - t0,
                      requests=b.nginx_requests() - n0 if server == "nginx" else None)
                log(f"seq {link} {who}: {b.rows[('seq', link, who)]['runs'][-1]:.3f} s")

                who = f"apbundlefs {server}"
                b.warm_server(bundle_name)
                url, opts = b.apb_url(server, link, bundle_name)
                mnt = os.path.join(b.mntdir, "apb")
                with mount_apb(url, mnt, b.logdir, opts) as m:
                    path = os.path.join(mnt, "model")
                    dt = read_seq(path, model_size)
                    st = stats_remote(m)
                    if not filecmp.cmp(path, model_src, shallow=False):
                        raise RuntimeError(f"{who}: the bytes read differ from {model_src}")
                b.add("seq", link, who, dt, mount=m.mount_seconds,
                      requests=st.get("requests"), connects=st.get("connects"),
                      remote_bytes=st.get("bytes"))
                log(f"seq {link} {who}: {dt:.3f} s (+ mount {m.mount_seconds:.3f} s), "
                    f"{st.get('requests')} requests, {st.get('connects')} connects")

            if RCLONE:
                who = "rclone nginx"
                b.warm_server(bundle_name)
                n0 = b.nginx_requests()
                with rclone_mounted(b, link) as m:
                    path = os.path.join(m.mnt, bundle_name)
                    # the same bytes apbundlefs serves as its model:
                    # the bundle's, read from start to end
                    dt = read_seq(path, os.path.getsize(os.path.join(b.www, bundle_name)))
                    if not filecmp.cmp(path, os.path.join(b.www, bundle_name),
                                       shallow=False):
                        raise RuntimeError("rclone: the bytes read differ from the bundle")
                b.add("seq", link, who, dt, mount=m.mount_seconds,
                      requests=b.nginx_requests() - n0)
                log(f"seq {link} {who}: {dt:.3f} s (+ mount {m.mount_seconds:.3f} s)")


def case_ttfb(b, model_src, bundle_name):
    """From starting the client to the first 4 KiB of the model (the
    object's first 4 KiB for curl) in the reader's hands, shaped link."""
    servers_ = ["nginx"] + (["rgw"] if "rgw" in b.servers else [])
    with open(model_src, "rb") as f:
        first = f.read(4096)
    for i in range(RUNS):
        for server in servers_:
            b.warm_server(bundle_name)
            s3 = b.servers[server]["server"] if server == "rgw" else None
            t0 = time.perf_counter()
            p = subprocess.Popen(curl_argv(b.url(server, "shaped", bundle_name), s3),
                                 stdout=subprocess.PIPE)
            try:
                got = p.stdout.read(4096)
                dt = time.perf_counter() - t0
            finally:
                p.kill()
                p.wait()
            if len(got) != 4096:
                raise RuntimeError(f"curl {server}: {len(got)} bytes")
            b.add("ttfb", "shaped", f"curl {server}", dt)

            b.warm_server(bundle_name)
            url, opts = b.apb_url(server, "shaped", bundle_name)
            mnt = os.path.join(b.mntdir, "apb")
            t0 = time.perf_counter()
            with mount_apb(url, mnt, b.logdir, opts) as m:
                got = read_first(os.path.join(mnt, "model"))
                dt = time.perf_counter() - t0
            if got != first:
                raise RuntimeError(f"apbundlefs {server}: wrong first bytes")
            b.add("ttfb", "shaped", f"apbundlefs {server}", dt)
        if RCLONE:
            b.warm_server(bundle_name)
            t0 = time.perf_counter()
            with rclone_mounted(b, "shaped") as m:
                got = read_first(os.path.join(m.mnt, bundle_name))
                dt = time.perf_counter() - t0
            with open(os.path.join(b.www, bundle_name), "rb") as f:
                if got != f.read(4096):
                    raise RuntimeError("rclone: wrong first bytes")
            b.add("ttfb", "shaped", "rclone nginx", dt)
        log("ttfb run", i + 1, {k[2]: round(v["runs"][-1], 4) for k, v in b.rows.items()
                                if k[0] == "ttfb"})


def case_torch(b, torch_src, bundle_name):
    """torch.load of the state dict, cold, shaped link; mount or download
    included."""
    expect = torch_digest(torch_src)
    servers_ = ["nginx"] + (["rgw"] if "rgw" in b.servers else [])

    def load(who, path, before=0.0):
        nonlocal loader
        dt, digest = loader.load(path)
        loader = TorchLoader()
        if digest != expect:
            raise RuntimeError(f"torch {who}: the state dict loaded differs")
        b.add("torch", "local" if who == "native" else "shaped", who, before + dt)
        log(f"torch {who}: {before + dt:.3f} s")

    loader = TorchLoader()
    try:
        for i in range(RUNS):
            drop_caches()
            load("native", torch_src)
            for server in servers_:
                b.warm_server(bundle_name)
                s3 = b.servers[server]["server"] if server == "rgw" else None
                dl = os.path.join(b.work, "download.pt")
                # download-then-read: the state dict's own object (one file,
                # no bundle) fetched whole, then loaded from local disk
                t0 = time.perf_counter()
                run(curl_argv(b.url(server, "shaped", "model.pt"), s3) + ["-o", dl])
                try:
                    load(f"curl {server}", dl, time.perf_counter() - t0)
                finally:
                    os.unlink(dl)

                b.warm_server(bundle_name)
                url, opts = b.apb_url(server, "shaped", bundle_name)
                mnt = os.path.join(b.mntdir, "apb")
                t0 = time.perf_counter()
                with mount_apb(url, mnt, b.logdir, opts) as m:
                    load(f"apbundlefs {server}", os.path.join(mnt, "model.pt"),
                         time.perf_counter() - t0)
            if RCLONE:
                b.warm_server(bundle_name)
                t0 = time.perf_counter()
                with rclone_mounted(b, "shaped") as m:
                    load("rclone nginx", os.path.join(m.mnt, "model.pt"),
                         time.perf_counter() - t0)
    finally:
        loader.close()


def par_read(path, n, size):
    """Seconds for n threads to read path together, thread i its i-th
    part, with 1 MiB preads: n sequential streams on one open file."""
    import threading
    part = -(-size // n)
    fd = os.open(path, os.O_RDONLY)
    got = [0] * n

    def worker(i):
        buf = bytearray(MIB)
        off, end = i * part, min(size, (i + 1) * part)
        while off < end:
            k = os.preadv(fd, [memoryview(buf)[:min(MIB, end - off)]], off)
            if k <= 0:
                break
            off += k
            got[i] += k
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    try:
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
    if sum(got) != size:
        raise RuntimeError(f"{path}: {n} readers read {sum(got)} bytes, expected {size}")
    return dt


def case_pipeline(b, model_src, model_size, bundle_name):
    """Why a single stream misses curl on the shaped link: the link with
    apbfetch's requests of a fixed size from a fixed number of threads
    (what any client could get with that pipeline), and apbundlefs with
    one, two and four sequential readers of the same mount."""
    url = b.url("nginx", "shaped", bundle_name)
    apbfetch = os.path.join(os.path.dirname(os.path.dirname(DAEMON)), "tools", "apbfetch")
    for i in range(RUNS):
        b.warm_server(bundle_name)
        t0 = time.perf_counter()
        run(curl_argv(url) + ["-o", "/dev/null"])
        b.add("pipeline", "shaped", "curl nginx", time.perf_counter() - t0)
        for mib, threads in ((1, 4), (8, 2)):
            who = f"apbfetch {mib} MiB x {threads} threads"
            b.warm_server(bundle_name)
            n0 = b.nginx_requests()
            t0 = time.perf_counter()
            run([apbfetch, "-t", str(threads), "-p", "8", url, f"all:{mib * MIB}"],
                stdout=subprocess.DEVNULL)
            b.add("pipeline", "shaped", who, time.perf_counter() - t0,
                  requests=b.nginx_requests() - n0)
        for readers in (1, 2, 4):
            who = f"apbundlefs nginx, {readers} reader{'s' if readers > 1 else ''}"
            b.warm_server(bundle_name)
            with mount_apb(url, os.path.join(b.mntdir, "apb"), b.logdir) as m:
                dt = par_read(os.path.join(m.mnt, "model"), readers, model_size)
                st = stats_remote(m)
            b.add("pipeline", "shaped", who, dt, requests=st.get("requests"),
                  connects=st.get("connects"))
        log("pipeline run", i + 1, {k[2]: round(v["runs"][-1], 3) for k, v in b.rows.items()
                                    if k[0] == "pipeline"})


def tier_supported(b, url):
    """None if the daemon takes cache_dir=, else why not (its message)."""
    mnt = os.path.join(b.mntdir, "probe")
    d = tempfile.mkdtemp(prefix="tier-probe-", dir=b.work)
    try:
        m = mount_apb(url, mnt, b.logdir, f"cache_dir={d},cache_dir_size=64M")
        m.close()
        return None
    except RuntimeError as e:
        said = str(e).split("no mount: ", 1)[-1]
        return f"this apbundlefs does not take -o cache_dir= (it said: {said})"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def case_tier(b, model_src, model_size, bundle_name):
    url, _ = b.apb_url("nginx", "shaped", bundle_name)
    why = tier_supported(b, url)
    if why:
        b.notes["tier"] = why
        log("tier: skipped:", why)
        return
    tier = os.path.join(b.work, "tier")     # the same disk as model_src
    for i in range(RUNS):
        drop_caches()
        b.add("tier", "local", "native", read_seq(model_src, model_size))
        # what apbundlefs reads from that disk at best: the same bundle
        # mounted from its local file, cold
        drop_caches()
        with mount_apb(os.path.join(b.www, bundle_name), os.path.join(b.mntdir, "local"),
                       b.logdir) as m:
            b.add("tier", "local", "apbundlefs local file",
                  read_seq(os.path.join(m.mnt, "model"), model_size))
        shutil.rmtree(tier, ignore_errors=True)
        os.makedirs(tier)
        opts = f"cache_dir={tier},cache_dir_size={2 * model_size // MIB + 64}M"
        mnt = os.path.join(b.mntdir, "apb")
        b.warm_server(bundle_name)
        with mount_apb(url, mnt, b.logdir, opts) as m:     # fills the tier
            read_seq(os.path.join(mnt, "model"), model_size)
        drop_caches()
        with mount_apb(url, mnt, b.logdir, opts) as m:
            path = os.path.join(mnt, "model")
            dt = read_seq(path, model_size)
            st = m.stats()
            if not filecmp.cmp(path, model_src, shallow=False):
                raise RuntimeError("tier: the bytes read differ from the model")
        rem = st.get("remote", {})
        tier_st = st.get("disk_tier", {})
        if not tier_st.get("hits") or tier_st.get("misses"):
            raise RuntimeError(f"tier: the warm mount was not served by the tier: {tier_st}")
        b.add("tier", "local", "apbundlefs warm tier", dt, remote_bytes=rem.get("bytes"),
              requests=rem.get("requests"), tier_hits=tier_st.get("hits"))
        log(f"tier: native {b.rows[('tier', 'local', 'native')]['runs'][-1]:.3f} s, "
            f"warm tier {dt:.3f} s, remote bytes {rem.get('bytes')}, tier {tier_st}")


# ---------------------------------------------------------------- report

def med(b, case, link, who):
    r = b.rows.get((case, link, who))
    return median(r["runs"]) if r else None


def criteria(b, model_size):
    out = []

    def ratio(num, den):
        return None if num is None or den is None or den == 0 else num / den

    r = ratio(med(b, "seq", "shaped", "curl nginx"), med(b, "seq", "shaped", "apbundlefs nginx"))
    out.append({"target": f"shaped link ({LINK_MBPS:g} MB/s, {RTT_MS:g} ms): cold sequential "
                          f"read >= {TARGET_SHAPED_VS_CURL}x curl -o /dev/null (time ratio "
                          "curl / apbundlefs, the mount not counted)",
                "value": r, "pass": r is not None and r >= TARGET_SHAPED_VS_CURL})
    rm = ratio(med(b, "seq", "shaped", "curl nginx"),
               _plus_mount(b, "seq", "shaped", "apbundlefs nginx"))
    out.append({"target": "the same, the mount counted", "value": rm,
                "pass": rm is not None and rm >= TARGET_SHAPED_VS_CURL})
    r = ratio(med(b, "seq", "loopback", "rclone nginx"),
              med(b, "seq", "loopback", "apbundlefs nginx"))
    out.append({"target": f"loopback: cold sequential read >= {TARGET_LOOP_VS_RCLONE}x "
                          "rclone mount's (time ratio rclone / apbundlefs)",
                "value": r, "pass": r is not None and r >= TARGET_LOOP_VS_RCLONE})
    r = ratio(med(b, "tier", "local", "native"), med(b, "tier", "local", "apbundlefs warm tier"))
    out.append({"target": f"warm read from the disk tier >= {TARGET_TIER_VS_NATIVE}x a cold "
                          "native read from the same disk (time ratio native / tier)",
                "value": r, "pass": r is not None and r >= TARGET_TIER_VS_NATIVE,
                "skipped": b.notes.get("tier")})
    for c in out:
        if c["value"] is None and not c.get("skipped"):
            c["skipped"] = "not measured in this run (CASES, LINKS, RCLONE)"
    return out


def _plus_mount(b, case, link, who):
    r = b.rows.get((case, link, who))
    if not r or not r.get("mount"):
        return None
    return median([t + m for t, m in zip(r["runs"], r["mount"])])


def fmt(x, nd=3):
    return "—" if x is None else f"{x:.{nd}f}"


def write_report(b, meta, crit, model_size):
    os.makedirs(OUT, exist_ok=True)
    rows = []
    for (case, link, who), r in b.rows.items():
        rows.append({"case": case, "link": link, "contender": who, "runs": r["runs"],
                     "median": median(r["runs"]),
                     **{k: v for k, v in r.items() if k != "runs"}})
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows, "criteria": crit, "notes": b.notes}, f, indent=1)
    md = ["# Remote bundles: apbundlefs against curl and rclone mount\n",
          f"Command: `{meta['command']}`  ",
          f"Machine: {meta['machine']}  ",
          f"Source: {meta['source']}  ",
          f"Link: {meta['link']}  ",
          f"Data: {meta['data']}  ",
          f"Runs: {RUNS} per row, medians; contenders side by side in each run.\n"]
    md.append("## Criteria (issue 16)\n")
    md.append("| target | value | result |\n|---|---|---|")
    for c in crit:
        res = "SKIP" if c.get("skipped") else ("PASS" if c["pass"] else "MISS")
        val = c["skipped"] if c.get("skipped") else fmt(c["value"], 2) + "x"
        md.append(f"| {c['target']} | {val} | {res} |")
    md.append("")
    titles = {"seq": f"Cold sequential read of the {model_size // MIB} MiB model (seconds; "
                     "MB/s of the model's bytes)",
              "ttfb": "Time to first byte: client start to the first 4 KiB (seconds)",
              "torch": "Cold torch.load of the state dict (seconds, mount or download "
                       "included)",
              "tier": "Warm read from the disk tier against a cold native read (seconds)",
              "pipeline": "The shaped link's pipeline: fixed requests from fixed threads "
                          "(apbfetch), apbundlefs with 1, 2 and 4 readers (seconds)"}
    for case in ("seq", "ttfb", "torch", "tier", "pipeline"):
        keys = [k for k in b.rows if k[0] == case]
        if not keys and case not in b.notes:
            continue
        md.append(f"## {titles[case]}\n")
        if case in b.notes:
            md.append(f"Skipped: {b.notes[case]}\n")
            continue
        md.append("| link | contender | median | MB/s | + mount | requests | connects | runs |")
        md.append("|---|---|---|---|---|---|---|---|")
        for k in keys:
            r = b.rows[k]
            m = median(r["runs"])
            mbps = f"{model_size / m / 1e6:.0f}" if case in ("seq", "tier", "pipeline") and m \
                else "—"
            mount = fmt(median(r["mount"])) if r.get("mount") else "—"
            reqs = median(r["requests"]) if r.get("requests") and None not in r["requests"] \
                else None
            conns = median(r["connects"]) if r.get("connects") and None not in r["connects"] \
                else None
            md.append(f"| {k[1]} | {k[2]} | {fmt(m)} | {mbps} | {mount} | "
                      f"{'—' if reqs is None else int(reqs)} | "
                      f"{'—' if conns is None else int(conns)} | "
                      f"{', '.join(f'{x:.3f}' for x in r['runs'])} |")
        md.append("")
    md.append("Plot: remote.png\n")
    with open(os.path.join(OUT, "results.md"), "w") as f:
        f.write("\n".join(md))
    plot(b, model_size)


def plot(b, model_size):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [c for c in ("seq", "ttfb", "torch", "tier", "pipeline")
              if any(k[0] == c for k in b.rows)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.5 * max(1, len(panels)), 4.2))
    if len(panels) <= 1:
        axes = [axes]
    for ax, case in zip(axes, panels):
        keys = [k for k in b.rows if k[0] == case]
        labels = [f"{k[2]}\n{k[1]}" for k in keys]
        if case in ("seq", "tier", "pipeline"):
            vals = [model_size / median(b.rows[k]["runs"]) / 1e6 for k in keys]
            ax.set_ylabel("MB/s (higher is better)")
        else:
            vals = [median(b.rows[k]["runs"]) for k in keys]
            ax.set_ylabel("seconds (lower is better)")
        colors = ["tab:blue" if "apbundlefs" in k[2] else "tab:gray" if "curl" in k[2]
                  else "tab:purple" if "apbfetch" in k[2]
                  else "tab:orange" if "rclone" in k[2] else "tab:green" for k in keys]
        ax.bar(range(len(keys)), vals, color=colors)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.set_title({"seq": "cold sequential read", "ttfb": "time to first 4 KiB",
                      "torch": "cold torch.load", "tier": "disk tier vs native",
                      "pipeline": "shaped link: pipeline depth"}[case])
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "remote.png"), dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main

def main():
    start(__doc__, "bench-remote", "network namespace, qdisc, drop_caches, mounts",
          programs=(DAEMON, PACKER))
    for exe in ("curl", "tc", "ip"):
        if not shutil.which(exe):
            sys.exit(f"bench-remote: {exe} is not installed (scripts/deps.sh "
                     "install_bench_remote)")
    if servers.missing_programs("nginx"):
        sys.exit("bench-remote: nginx is not installed (scripts/deps.sh install_servers)")
    t_start = time.monotonic()
    own_network()
    os.makedirs(BENCH_DIR, exist_ok=True)
    leftovers(BENCH_DIR)
    work = tempfile.mkdtemp(prefix="run-", dir=BENCH_DIR)
    b = Bench(work)
    links = []
    try:
        proxy = build_proxy(os.path.join(work, "bin"))
        model_dir, torch_dir = make_data(os.path.join(BENCH_DIR, "data"))
        model_src = os.path.join(model_dir, "model")
        model_size = os.path.getsize(model_src)
        torch_src = os.path.join(torch_dir, "model.pt")
        have_torch = os.path.exists(torch_src) and torch_available() is None
        www = b.www = os.path.join(work, "www")
        os.makedirs(www)
        log("apbundle create (version 2)")
        run([PACKER, "create", "--format", "2", os.path.join(www, "model.apbundle"), model_dir],
            stdout=subprocess.DEVNULL)
        if have_torch:
            run([PACKER, "create", "--format", "2", os.path.join(www, "torch.apbundle"),
                 torch_dir], stdout=subprocess.DEVNULL)
            shutil.copy(torch_src, os.path.join(www, "model.pt"))
        elif "torch" in CASES:
            b.notes["torch"] = torch_available() or "no state dict was written"
        web = servers.Nginx(www, autoindex=True).start()
        b.servers["nginx"] = {"server": web, "links": {"loopback": web.endpoint}}
        lk = Link(proxy, web.port, b.logdir)
        links.append(lk)
        b.servers["nginx"]["links"]["shaped"] = f"http://127.0.0.1:{lk.port}"
        if USE_RGW and not servers.missing_programs("rgw"):
            need = sum(os.path.getsize(os.path.join(www, n)) for n in os.listdir(www))
            s3 = servers.Rgw(memstore_bytes=max(1 << 30, need * 2 + (256 << 20))).start()
            b.servers["rgw"] = {"server": s3, "links": {"loopback": s3.endpoint}}
            for n in sorted(os.listdir(www)):
                log("RGW: PUT", n)
                s3.put_object(n, os.path.join(www, n))
            lk = Link(proxy, s3.port, b.logdir)
            links.append(lk)
            b.servers["rgw"]["links"]["shaped"] = f"http://127.0.0.1:{lk.port}"
            os.environ.update(AWS_ACCESS_KEY_ID=s3.access_key,
                              AWS_SECRET_ACCESS_KEY=s3.secret_key)
        elif USE_RGW:
            b.notes["rgw"] = "Ceph RGW is not installed (scripts/deps.sh install_servers)"
        if not RCLONE:
            b.notes["rclone"] = "rclone is not installed (scripts/deps.sh install_bench_remote)"
        link_probe = probe_link(b)
        log("link:", link_probe)
        if "seq" in CASES:
            case_seq(b, model_src, model_size, "model.apbundle")
        if "ttfb" in CASES:
            case_ttfb(b, model_src, "model.apbundle")
        if "torch" in CASES and have_torch:
            case_torch(b, torch_src, "torch.apbundle")
        if "tier" in CASES:
            case_tier(b, model_src, model_size, "model.apbundle")
        if "pipeline" in CASES:
            case_pipeline(b, model_src, model_size, "model.apbundle")
        envs = " ".join(f"{k}={os.environ[k]}" for k in
                        ("QUICK", "RUNS", "MODEL_MIB", "TORCH_MIB", "LINK_MBPS", "RTT_MS", "RGW",
                         "RCLONE", "CASES", "LINKS", "APB_OPTS") if os.environ.get(k))
        meta = {"command": (envs + " " if envs else "") +
                "/usr/bin/python3 scripts/bench-remote.py",
                "machine": machine_summary(), "source": source_tree(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "link": link_probe,
                "data": f"model: {model_size // MIB} MiB of random bytes in a version 2 "
                        f"bundle; torch: a state dict of {TORCH_MIB} MiB float32 "
                        "(torch.save) in a version 2 bundle",
                "versions": {"rclone": tool_version([RCLONE, "version"]) if RCLONE else None,
                             "curl": tool_version(["curl", "--version"]),
                             "nginx": tool_version(["/usr/sbin/nginx", "-v"])},
                "notes": b.notes}
        crit = criteria(b, model_size)
        write_report(b, meta, crit, model_size)
        for c in crit:
            res = "SKIP" if c.get("skipped") else ("PASS" if c["pass"] else "MISS")
            print(f"{res:4}  {fmt(c['value'], 2):>6}x  {c['target']}")
        print(f"\n{OUT}/results.md, {time.monotonic() - t_start:.0f} s", flush=True)
    finally:
        close_mounts()
        for lk in links:
            lk.close()
        servers.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def leftovers(base):
    """What a run killed with SIGKILL left (its servers and proxies die
    with it, their parent-death signal; its mounts do not): unmount them
    and remove its run directories."""
    with open("/proc/self/mountinfo") as f:
        left = [p[4] for p in (line.split() for line in f) if p[4].startswith(base + "/run-")]
    for mnt in sorted(left, reverse=True):
        log("cleanup: unmounting leftover", mnt)
        subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)
    for d in os.listdir(base):
        if d.startswith("run-"):
            shutil.rmtree(os.path.join(base, d), ignore_errors=True)


def tool_version(argv):
    r = subprocess.run(argv, capture_output=True, text=True)
    text = (r.stdout + r.stderr).strip()
    return text.splitlines()[0] if text else "?"


def probe_link(b):
    """The shaped link as curl sees it: the round trip of a 1-byte ranged
    GET on a kept-alive connection (median of 20), and a 64 MiB+ transfer's
    rate (the seq case's curl rows measure the whole model)."""
    url = b.url("nginx", "shaped", "model.apbundle")
    r = subprocess.run(["curl", "-sS", "-r", "0-0", "-w",
                        "%{time_pretransfer} %{time_starttransfer}\\n"] +
                       ["-o", "/dev/null", url] * 21,
                       capture_output=True, text=True, check=True)
    rtts = [float(s) - float(p) for p, s in (ln.split() for ln in r.stdout.split("\n")[1:]
                                             if ln.strip())]
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download}", url],
                       capture_output=True, text=True, check=True)
    return (f"delayproxy ({RTT_MS:g} ms round trip) + htb on lo at {LINK_MBPS:g} MB/s; "
            f"measured by curl: request round trip {median(rtts) * 1000:.2f} ms (median of "
            f"{len(rtts)} kept-alive 1-byte GETs), {float(r.stdout) / 1e6:.0f} MB/s "
            "(one GET of the model bundle)")


if __name__ == "__main__":
    sys.exit(main())
