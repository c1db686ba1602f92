#!/usr/bin/python3
"""Requests per MiB a mount of a bundle behind a URL sends: `cat` of a
64 MiB model (bytes like float16 weights: zstd keeps about 75%) packed as
version 1, version 2 raw and version 2 zstd, served by nginx
(scripts/servers.py) through the fault proxy, which records every request's
Range. One line per bundle: the requests after the open's (a version 2
bundle's block table's included: one), their median and largest size, the
stored bytes fetched, the connections, the time of the cat.

    scripts/bench-requests.py [FORMAT,...] [OPTION=VALUE ...]

FORMAT: v1, v2raw, v2zstd (default: all three); OPTIONs are mount options
(e.g. chunk_size=4K, preload=m.bin: then the requests of the preload,
waited for before the cat) except block_size=, which packs the version 2
bundles with that block size. APB_BUILD selects the build (benchlib.py).
PROXY=0: straight to nginx (the proxy, a Python thread per connection,
adds latency per request); counts from .stats, sizes then the mean.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from benchlib import MIB, PACKER, mount_apb
import servers

SIZE = 64 * MIB
PROXY = os.environ.get("PROXY", "1") != "0"
FORMATS = {"v1": ["--format", "1"], "v2raw": ["--format", "2"],
           "v2zstd": ["--format", "2", "--compress", "zstd"]}


def modelish(path, size, seed):
    import numpy as np
    a = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    a[1::2] = 0x3C | (a[1::2] & 3)
    a.tofile(path)


def wait_for(cond, timeout=120.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise RuntimeError("timed out")
        time.sleep(0.01)


def one(fmt, opts, block_size, work, web):
    bundle = os.path.join(web.root, fmt + ".apbundle")
    args = [PACKER, "create"] + FORMATS[fmt]
    if block_size and fmt != "v1":
        args += ["--block-size", block_size]
    subprocess.run(args + [bundle, "m.bin=" + os.path.join(work, "m.bin")], check=True,
                   stdout=subprocess.DEVNULL)
    proxy = servers.FaultProxy(web.endpoint) if PROXY else None
    if proxy:
        proxy.start()
    try:
        url = "%s/%s.apbundle" % (proxy.endpoint if proxy else web.endpoint, fmt)
        mnt = os.path.join(work, "mnt-" + fmt)
        o = ",".join("%s=%s" % kv for kv in opts.items())
        with mount_apb(url, mnt, o or "max_memory=256M") as m:
            if "preload" in opts:
                wait_for(lambda: m.stats()["models"]["m.bin"]["resident_bytes"] == SIZE)
            t = time.perf_counter()
            subprocess.run(["cat", os.path.join(mnt, "m.bin")], check=True,
                           stdout=subprocess.DEVNULL)
            dt = time.perf_counter() - t
            if proxy:
                wait_for(lambda: m.stats()["remote"]["requests"] == len(proxy.requests))
            st = m.stats()["remote"]
    finally:
        if proxy:
            proxy.stop()
    lens = []
    for r in proxy.requests[1:] if proxy else []:
        g = re.fullmatch(r"bytes=(\d+)-(\d+)", r.range or "")
        lens.append(int(g.group(2)) - int(g.group(1)) + 1)
    if not proxy:  # sizes unknown: the daemon's counters
        lens = [st["bytes"] // max(1, st["requests"] - 1)] * (st["requests"] - 1)
    lens.sort()
    print("%-7s %-24s requests %5d = %6.2f/MiB  median %5d KiB  max %5d KiB  "
          "fetched %6.1f MiB  connects %d  cat %.2f s"
          % (fmt, o or "defaults", len(lens), len(lens) / (SIZE / MIB),
             lens[len(lens) // 2] >> 10 if lens else 0, lens[-1] >> 10 if lens else 0,
             sum(lens) / MIB, st["connects"], dt), flush=True)


def main():
    fmts = FORMATS if len(sys.argv) < 2 or "=" in sys.argv[1] else sys.argv[1].split(",")
    opts = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    block_size = opts.pop("block_size", None)
    work = tempfile.mkdtemp(prefix="apb-requests-", dir="/var/tmp")
    try:
        modelish(os.path.join(work, "m.bin"), SIZE, 7)
        os.makedirs(os.path.join(work, "www"))
        with servers.Nginx(os.path.join(work, "www")) as web:
            for fmt in fmts:
                one(fmt, opts, block_size, work, web)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
