#!/usr/bin/python3
"""Cold sequential read of one model with prefetch on and off, side by side,
on the local disk and on a store with latency.

The store with latency is scripts/benchsrc/slowfs.c (built here): a FUSE
passthrough of the bundle file that delays every read by DELAY_US and
bypasses the page cache. For each store: the store's own sequential speed
(`cat` of the bundle file from it), then apbundlefs reading the model with
prefetch=on and prefetch=off (and on with backing_io=buffered), runs
interleaved, the page cache dropped and the daemon's cache cleared before
each. Medians of RUNS. READER=direct reads the model through the mount
with 128 KiB O_DIRECT reads (no kernel readahead) instead of cat.
Run as root: scripts/bench-prefetch.py
"""
import os
import subprocess
import tempfile

from benchlib import (PACKER, Mount, build_fuse_tool, drop_caches, median, mount_apb, timed,
                      write_random)

MIB = int(os.environ.get("MODEL_MIB", "128"))
RUNS = int(os.environ.get("RUNS", "3"))
DELAY_US = int(os.environ.get("DELAY_US", "1000"))
OPTS = "max_memory=256M,readahead=4M"


# How the model is read through the mount: cat (buffered: the kernel's
# own readahead keeps 1 MiB requests in flight) or direct (128 KiB O_DIRECT
# reads one after another: no kernel readahead, only the daemon's).
READER = os.environ.get("READER", "cat")


def cat_seconds(path, through_mount=False):
    if through_mount and READER == "direct":
        return timed(["dd", "if=" + path, "of=/dev/null", "bs=128K", "iflag=direct",
                      "status=none"])
    return timed(["cat", path])


# (label, extra mount options); the store's own speed is measured between
# them, every run of every reader interleaved, so that the disk's drift
# between runs hits all of them alike.
READERS = [("apbundlefs prefetch=on", "prefetch=on"),
           ("apbundlefs prefetch=off", "prefetch=off"),
           ("apbundlefs prefetch=on, backing_io=buffered",
            "prefetch=on,backing_io=buffered")]


def measure(store, bundle, work, size):
    own, secs, rates, wasted = [], {}, {}, {}
    mounts = {}
    try:
        for i, (label, extra) in enumerate(READERS):
            mounts[label] = mount_apb(bundle, f"{work}/mnt{i}", OPTS + "," + extra)
        for _ in range(RUNS):
            drop_caches()
            own.append(cat_seconds(bundle))
            for label, m in mounts.items():
                m.control("clear\nreset-stats\n")
                drop_caches()
                secs.setdefault(label, []).append(
                    cat_seconds(os.path.join(m.mnt, "model"), True))
                s = m.stats()
                rates.setdefault(label, []).append(s["cache"]["hit_rate"])
                wasted.setdefault(label, []).append(s["prefetch"]["wasted_bytes"])
    finally:
        for m in mounts.values():
            m.close()
    rows = [(store, "the store itself (cat of the bundle)",
             size / median(own) / 1e6, None, None)]
    for label, _ in READERS:
        rows.append((store, label, size / median(secs[label]) / 1e6,
                     median(rates[label]), median(wasted[label])))
    return rows


def main():
    work = tempfile.mkdtemp(prefix="apb-pfbench-", dir="/var/tmp")
    model, bundle = f"{work}/model.bin", f"{work}/b.apbundle"
    slow = f"{work}/slow"
    try:
        slowfs = build_fuse_tool("slowfs", f"{work}/slowfs")
        write_random(model, MIB)
        subprocess.run([PACKER, "create", bundle, f"model={model}"], check=True)
        size = MIB << 20
        rows = measure("local disk", bundle, work, size)
        with Mount([slowfs, bundle, slow, str(DELAY_US)], slow):
            rows += measure(f"{DELAY_US} us per read", f"{slow}/data", work, size)
        print(f"{MIB} MiB model read by {READER}, {OPTS}, medians of {RUNS} cold runs; "
              f"kernel {os.uname().release}, {os.cpu_count()} cores")
        print("| store | reader | MB/s | hit rate | wasted bytes |")
        print("|---|---|---|---|---|")
        for store, what, mbps, rate, waste in rows:
            r = "" if rate is None else f"{rate:.3f}"
            w = "" if waste is None else f"{waste:.0f}"
            print(f"| {store} | {what} | {mbps:.0f} | {r} | {w} |")
    finally:
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
