#!/usr/bin/python3
"""Learned load order: the first and the second cold start of torch.load
of a state dict from a bundle behind nginx over a shaped link.

    sudo scripts/bench-order.py

The issue's criterion (issue 16): with learned load order, a second cold
start of a framework load (torch.load of a model a few times the budget's
readahead) is at least 1.5x faster than the first over a link limited to
100 MB/s with 5 ms latency.

The model: a state dict of TENSORS float32 weights of TENSOR_KIB each
(default 64 of 256 KiB), with SHAPE=layers (the default) each followed by
a 4 KiB bias and a 4 KiB norm, as a real network's layers are (16.5 MiB:
four times the 4 MiB readahead of the default budget); SHAPE=weights
leaves those out. Saved with torch.save. torch.save stores the tensors' records in
the zip sorted by key as strings ("0", "1", "10", "100", ...) and
torch.load reads them in key order as numbers, so a load seeks back and
forth through the file: sequential readahead helps within a record, not
across records. Packed with `apbundle create` (version 2, no compression),
served by nginx (scripts/servers.py) on 127.0.0.1.

The link: netem is not in this kernel, so the shaping is
  - bandwidth: a network namespace joined to the host by a veth pair whose
    host end has a tc tbf qdisc of RATE_MBPS (default 100 MB/s = 800 Mbit/s):
    everything the daemon downloads goes through it, whatever the number of
    connections;
  - latency: the fault proxy of scripts/servers.py on the host end of the
    veth, in front of nginx, holds every response for LATENCY_MS (default 5)
    before its first byte (the round trip a request costs).
The daemon runs in the namespace (nsenter --net only: its FUSE mount stays
in the host's mount namespace), torch.load on the host. A fourth start
mounts the bundle file itself, no link, as the floor: what the mount and
torch.load cost on this machine without a network.

Each round: a fresh state file; mount (max_memory=BUDGET, default 64M, so
readahead 4M), drop the page cache, time torch.load in a child that has
imported torch already (only the load is timed), check every tensor's
bytes (SHA-256 of each, against the saved ones), unmount (the state file
is written), and again with the same state file. A third start with
learn_order=0 and the same state file is the control: a second cold start
without the learned order. ROUNDS rounds (default 5), medians, ratios
side by side, and the median of each round's first/second (the two ran
back to back); a table and one JSON line.

Environment: TENSORS, TENSOR_KIB, SHAPE, BUDGET, RATE_MBPS, LATENCY_MS, ROUNDS,
EXTRA_OPTS (more -o options for every mount, e.g. readahead=16M),
APB_BUILD (the build directory, default ./build).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
import servers  # noqa: E402

TENSORS = int(os.environ.get("TENSORS", "64"))
TENSOR_KIB = int(os.environ.get("TENSOR_KIB", "256"))
BUDGET = os.environ.get("BUDGET", "64M")
RATE_MBPS = float(os.environ.get("RATE_MBPS", "100"))
LATENCY_MS = float(os.environ.get("LATENCY_MS", "5"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
SHAPE = os.environ.get("SHAPE", "layers")

NS = "apbbench-order-%d" % os.getpid()
VETH_HOST, VETH_NS = "apbo%dh" % (os.getpid() % 100000), "apbo%dn" % (os.getpid() % 100000)
HOST_IP, NS_IP = "10.213.77.1", "10.213.77.2"

# Runs in a child: import torch, say ready, wait for "go", time the load.
LOADER = r"""
import hashlib, json, sys, time
import torch
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
t0 = time.perf_counter()
sd = torch.load(sys.argv[1])
t = time.perf_counter() - t0
sums = {k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in sd.items()}
print(json.dumps({"load_s": t, "sums": sums}))
"""

MAKER = r"""
import hashlib, json, sys
import torch
n, kib, small, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
g = torch.Generator().manual_seed(1616)
sd = {}
for i in range(n):
    sd["layer%03d.weight" % i] = torch.rand(kib * 256, generator=g)
    if small:  # a layer's bias and norm, 4 KiB each, as real models have
        sd["layer%03d.bias" % i] = torch.rand(1024, generator=g)
        sd["layer%03d.norm" % i] = torch.rand(1024, generator=g)
torch.save(sd, path)
print(json.dumps({k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in sd.items()}))
"""


def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True, text=True)


class Link:
    """The namespace, the veth pair and the tbf; close() removes them."""

    def __init__(self):
        self.up = False
        sh("ip", "netns", "add", NS)
        self.up = True
        sh("ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS)
        sh("ip", "link", "set", VETH_NS, "netns", NS)
        sh("ip", "addr", "add", HOST_IP + "/30", "dev", VETH_HOST)
        sh("ip", "link", "set", VETH_HOST, "up")
        sh("ip", "netns", "exec", NS, "ip", "addr", "add", NS_IP + "/30", "dev", VETH_NS)
        sh("ip", "netns", "exec", NS, "ip", "link", "set", VETH_NS, "up")
        sh("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up")
        # Host to namespace: the direction of the downloads.
        sh("tc", "qdisc", "add", "dev", VETH_HOST, "root", "tbf",
           "rate", "%dmbit" % int(RATE_MBPS * 8), "burst", "256kb", "latency", "50ms")

    def close(self):
        if not self.up:
            return
        subprocess.run(["ip", "link", "del", VETH_HOST], capture_output=True)
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)
        self.up = False


def make_model(work):
    pt = os.path.join(work, "model.pt")
    r = subprocess.run([sys.executable, "-c", MAKER, str(TENSORS), str(TENSOR_KIB),
                        "1" if SHAPE == "layers" else "0", pt],
                       check=True, capture_output=True, text=True)
    sums = json.loads(r.stdout)
    bundle = os.path.join(work, "www", "model.apbundle")
    os.makedirs(os.path.dirname(bundle))
    subprocess.run([benchlib.PACKER, "create", bundle, pt], check=True, capture_output=True)
    return pt, bundle, sums


def learned_chunks(state):
    """Chunks in the state file's order of model.pt (0: none)."""
    try:
        with open(state) as f:
            order = json.load(f)["models"]["model.pt"].get("order")
    except (OSError, KeyError, ValueError):
        return 0
    return sum(c for _, c in order["runs"]) if order else 0


def cold_load(url, mnt, state, learn_order, sums, netns=True):
    """One cold start: mount, drop caches, time torch.load; the daemon's
    .stats after the load. netns False: the daemon in the host's network
    namespace (a local bundle)."""
    opts = "max_memory=%s,state=%s,learn_order=%d" % (BUDGET, state, learn_order)
    if os.environ.get("EXTRA_OPTS"):
        opts += "," + os.environ["EXTRA_OPTS"]
    argv = ["nsenter", "--net=/run/netns/" + NS] if netns else []
    argv += [benchlib.DAEMON, "-f", "-o", opts, url, mnt]
    child = subprocess.Popen([sys.executable, "-c", LOADER, os.path.join(mnt, "model.pt")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with benchlib.Mount(argv, mnt) as m:
            benchlib.drop_caches()
            child.stdin.write("go\n")
            child.stdin.flush()
            out = json.loads(child.stdout.readline())
            stats = m.stats()
        if child.wait(60) != 0:
            raise RuntimeError("loader failed")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if out["sums"] != sums:
        raise RuntimeError("torch.load through the mount gave other tensors")
    if stats["cache"]["memory_used"] > stats["cache"]["memory_limit"]:
        raise RuntimeError("budget exceeded: %r" % stats["cache"])
    return out["load_s"], stats


def main():
    benchlib.start(__doc__, "bench-order.py", "netns, tc, drop_caches",
                   [benchlib.DAEMON, benchlib.PACKER])
    for tool in ("ip", "tc", "nsenter"):
        if not shutil.which(tool):
            sys.exit("bench-order.py: %s is missing (iproute2, util-linux)" % tool)
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("bench-order.py: no torch (. scripts/deps.sh; install_torch)")
    work = tempfile.mkdtemp(prefix="apb-bench-order-")
    link = web = proxy = None
    rows = {"first": [], "second": [], "second, learn_order=0": [],
            "local bundle, no link (floor)": []}
    stats = {}
    try:
        pt, bundle, sums = make_model(work)
        size = os.path.getsize(pt)
        web = servers.Nginx(os.path.dirname(bundle)).start()
        link = Link()
        proxy = servers.FaultProxy(web.endpoint, host=HOST_IP).start()
        proxy.delay(LATENCY_MS / 1000.0)
        url = proxy.endpoint + "/model.apbundle"
        mnt = os.path.join(work, "mnt")
        for r in range(ROUNDS):
            state = os.path.join(work, "state-%d.json" % r)
            for label, lo in (("first", 1), ("second", 1), ("second, learn_order=0", 0),
                              ("local bundle, no link (floor)", 1)):
                if label.startswith("local"):
                    t, st = cold_load(bundle, mnt, state + ".local", lo, sums, netns=False)
                else:
                    t, st = cold_load(url, mnt, state, lo, sums)
                rows[label].append(t)
                stats[label] = st["prefetch"]
                print("round %d %-30s %.3f s  %s %s learned %d" % (
                    r + 1, label, t, {k: st["prefetch"][k] for k in
                                      ("order_chunks", "order_hits", "order_stopped",
                                       "issued", "wasted")},
                    {k: st["cache"][k] for k in ("hits", "misses")},
                    learned_chunks(state)), flush=True)
    finally:
        if proxy is not None:
            proxy.stop()
        benchlib.close_all()
        if link is not None:
            link.close()
        if web is not None:
            web.close()
        shutil.rmtree(work, ignore_errors=True)
    med = {k: benchlib.median(v) for k, v in rows.items()}
    # Each round's first and second ran back to back: their ratio is the
    # comparison least disturbed by the rest of the machine.
    pair = benchlib.median([f / s for f, s in zip(rows["first"], rows["second"])])
    load = os.getloadavg()
    print()
    print("torch.load of a %d MiB state dict (%d layers, SHAPE=%s), max_memory=%s, link "
          "%g MB/s + %g ms per response, %d rounds" % (size >> 20, TENSORS, SHAPE, BUDGET,
                                                       RATE_MBPS, LATENCY_MS, ROUNDS))
    print("median of each round's first / second: %.2fx; load average %.1f %.1f %.1f" %
          ((pair,) + load))
    print("| cold start | median s | MB/s | first / this |")
    print("|---|---|---|---|")
    for k, v in med.items():
        print("| %s | %.3f | %.0f | %.2fx |" % (k, v, size / v / 1e6, med["first"] / v))
    print(json.dumps({"bench": "order", "model_bytes": size, "tensors": TENSORS,
                      "shape": SHAPE,
                      "budget": BUDGET, "rate_mbps": RATE_MBPS, "latency_ms": LATENCY_MS,
                      "rounds": ROUNDS, "seconds": rows, "median_s": med,
                      "speedup_second": med["first"] / med["second"],
                      "speedup_second_paired": pair, "loadavg": load,
                      "speedup_second_without_order": med["first"] / med["second, learn_order=0"],
                      "last_prefetch_stats": stats}))


if __name__ == "__main__":
    main()
