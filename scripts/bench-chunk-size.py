#!/usr/bin/python3
"""Measure what the cache chunk size costs and buys, to choose its default.

For each chunk size, on one mount, RUNS times: a cold sequential read of a
model larger than the budget (page cache dropped and the daemon's cache
cleared first, 1 MiB reads), and random 4 KiB O_DIRECT reads over the same
model (latency and read amplification: bundle bytes read per byte served).
Run as root from the repository: scripts/bench-chunk-size.py
"""
import os
import random
import subprocess
import tempfile
import time

from benchlib import PACKER, drop_caches, median, mount_apb, read_seq, write_random

MODEL_MIB = int(os.environ.get("MODEL_MIB", "512"))
BUDGET = "64M"
SIZES = os.environ.get("SIZES", "64K 128K 256K 512K 1M").split()
RUNS = int(os.environ.get("RUNS", "3"))
RANDOM_READS = 3000


def random_reads(path, size, rng):
    """Median and p99 microseconds of 4 KiB O_DIRECT preads."""
    import mmap
    buf = mmap.mmap(-1, 4096)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    lat = []
    try:
        for _ in range(RANDOM_READS):
            off = rng.randrange(size // 4096) * 4096
            t0 = time.perf_counter()
            os.preadv(fd, [buf], off)
            lat.append((time.perf_counter() - t0) * 1e6)
    finally:
        os.close(fd)
    lat.sort()
    return median(lat), lat[int(len(lat) * 0.99)]


def main():
    work = tempfile.mkdtemp(prefix="apb-chunkbench-", dir="/var/tmp")
    model = os.path.join(work, "model.bin")
    bundle = os.path.join(work, "b.apbundle")
    mnt = os.path.join(work, "mnt")
    path = os.path.join(mnt, "m")
    size = MODEL_MIB << 20
    try:
        write_random(model, MODEL_MIB)
        subprocess.run([PACKER, "create", bundle, f"m={model}"], check=True)
        print(f"model {MODEL_MIB} MiB, max_memory={BUDGET}, {RUNS} runs, "
              f"{RANDOM_READS} random reads; kernel {os.uname().release}")
        print("| chunk | cold seq MB/s (median) | rand 4K p50 us | p99 us | "
              "bytes read per byte served (random) |")
        print("|---|---|---|---|---|")
        for cs in SIZES:
            seq, p50s, p99s, amp = [], [], [], []
            with mount_apb(bundle, mnt, f"max_memory={BUDGET},chunk_size={cs}") as m:
                for run in range(RUNS):
                    m.control("clear\n")
                    drop_caches()
                    seq.append(size / read_seq(path, size) / 1e6)
                    m.control("clear\nreset-stats\n")
                    drop_caches()
                    p50, p99 = random_reads(path, size, random.Random(run))
                    p50s.append(p50)
                    p99s.append(p99)
                    io = m.stats()["io"]
                    amp.append(io["backing_bytes_read"] / io["bytes_served"])
            print(f"| {cs} | {median(seq):.0f} | "
                  f"{median(p50s):.0f} | "
                  f"{median(p99s):.0f} | "
                  f"{median(amp):.1f} |", flush=True)
    finally:
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
