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
import time

from benchlib import PACKER, ROOT, drop_caches, median, mount_apb, write_random

MIB = int(os.environ.get("MODEL_MIB", "128"))
RUNS = int(os.environ.get("RUNS", "3"))
DELAY_US = int(os.environ.get("DELAY_US", "1000"))
OPTS = "max_memory=256M,readahead=4M"


# How the model is read through the mount: cat (buffered: the kernel's
# own readahead keeps 1 MiB requests in flight) or direct (128 KiB O_DIRECT
# reads one after another: no kernel readahead, only the daemon's).
READER = os.environ.get("READER", "cat")


def cat_seconds(path, through_mount=False):
    t0 = time.perf_counter()
    if through_mount and READER == "direct":
        subprocess.run(["dd", "if=" + path, "of=/dev/null", "bs=128K", "iflag=direct"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    else:
        subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def wait_for_mount(path, proc, timeout=10.0):
    end = time.monotonic() + timeout
    while not os.path.ismount(path):
        if proc.poll() is not None or time.monotonic() > end:
            raise SystemExit("slowfs did not mount")
        time.sleep(0.01)


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
    slowfs = f"{work}/slowfs"
    os.mkdir(slow)
    proc = None
    try:
        cflags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"],
                                capture_output=True, text=True, check=True).stdout.split()
        subprocess.run(["cc", "-O2", "-o", slowfs,
                        os.path.join(ROOT, "scripts", "benchsrc", "slowfs.c")] + cflags,
                       check=True)
        write_random(model, MIB)
        subprocess.run([PACKER, "create", bundle, f"model={model}"], check=True)
        size = MIB << 20
        rows = measure("local disk", bundle, work, size)
        proc = subprocess.Popen([slowfs, bundle, slow, str(DELAY_US)])
        wait_for_mount(slow, proc)
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
        if proc:
            subprocess.run(["fusermount3", "-u", slow], check=False)
            proc.wait(timeout=10)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
