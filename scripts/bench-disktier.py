#!/usr/bin/python3
"""The disk tier (-o cache_dir=) against native: a MODEL_MIB model (default
1024) in a bundle served by nginx on loopback (scripts/servers.py). One
mount with cache_dir= reads it whole (cold from the server, which fills the
tier); then, RUNS times, side by side with the page cache dropped before
each: `cat` of the original file (native cold read of the same disk), a
fresh mount with the same cache_dir= reading it with `cat` (warm from the
tier, cold page cache: the tier's files are read from disk), and, for
reference, a mount of the bundle file itself (the local source, O_DIRECT:
what the mount reads at from this disk without the tier). Prints medians
and the tier's counters of the last warm run. Run as root:

    scripts/bench-disktier.py
    MODEL_MIB=256 RUNS=3 CHUNK=1M scripts/bench-disktier.py

Environment: MODEL_MIB, RUNS (default 5), CHUNK (chunk_size=, default the
mount's 64K), MAX_MEMORY (default 256M), WORK (a directory on the disk to
measure; default a fresh one under /var/tmp, removed after), DISK=ram (the
model, the bundle and cache_dir on benchlib's RamDisk instead: a steady
disk, docs/PERFORMANCE.md "A steady disk"), DISK_MBPS=N (with DISK=ram:
its reads limited to N MB/s).

Per run the native and tier reads are back to back; besides the medians of
each, the median of the per-run ratios is printed, which drifts less on a
shared host.
"""
import os
import shutil
import subprocess
import sys
import tempfile

from benchlib import (PACKER, DAEMON, MIB as MiB, RamDisk, drop_caches, median,
                      mount_apb, start, timed, write_random, close_all)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import servers  # noqa: E402

MIB = int(os.environ.get("MODEL_MIB", "1024"))
RUNS = int(os.environ.get("RUNS", "5"))
CHUNK = os.environ.get("CHUNK")
MAX_MEMORY = os.environ.get("MAX_MEMORY", "256M")


def cpu_seconds(pid):
    """User + system CPU seconds of process pid so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    start(__doc__, "bench-disktier", "it drops the page cache", [PACKER, DAEMON])
    given = os.environ.get("WORK")
    work = given or tempfile.mkdtemp(prefix="apb-tier-", dir="/var/tmp")
    base, disk = work, None
    if os.environ.get("DISK") == "ram":
        disk = RamDisk(f"{work}/ram", 3 * (MIB + 64) * MiB)
        if os.environ.get("DISK_MBPS"):
            disk.limit(int(os.environ["DISK_MBPS"]))
        print(f"disk: {disk.describe()}", flush=True)
        work = disk.mnt
    www, cache, mnt = f"{work}/www", f"{work}/cache", f"{work}/mnt"
    model = f"{work}/model.bin"
    for d in (www, cache, mnt):
        os.makedirs(d, exist_ok=True)
    opts = f"max_memory={MAX_MEMORY},cache_dir={cache},cache_dir_size={MIB + 64}M"
    if CHUNK:
        opts += f",chunk_size={CHUNK}"
    try:
        write_random(model, MIB)
        subprocess.run([PACKER, "create", f"{www}/b.apbundle", f"model={model}"],
                       check=True, stdout=subprocess.DEVNULL)
        with servers.Nginx(www) as web:
            url = web.url("b.apbundle")
            drop_caches()
            with mount_apb(url, mnt, opts) as m:
                fill = timed(["cat", f"{mnt}/model"])
                t = m.stats()["disk_tier"]
            print(f"fill (cold from nginx, writing the tier): {fill:.3f} s, "
                  f"{MIB / fill:.0f} MiB/s; tier misses {t['misses']}, "
                  f"written {t['bytes_written']} bytes", flush=True)
            native, warm, local, wcpu, lcpu = [], [], [], [], []
            lopts = f"max_memory={MAX_MEMORY}" + (f",chunk_size={CHUNK}" if CHUNK else "")
            for i in range(RUNS):
                drop_caches()
                native.append(timed(["cat", model]))
                drop_caches()
                with mount_apb(url, mnt, opts) as m:
                    c0 = cpu_seconds(m.proc.pid)
                    warm.append(timed(["cat", f"{mnt}/model"]))
                    wcpu.append(cpu_seconds(m.proc.pid) - c0)
                    t = m.stats()
                drop_caches()
                with mount_apb(f"{www}/b.apbundle", mnt, lopts) as m:
                    c0 = cpu_seconds(m.proc.pid)
                    local.append(timed(["cat", f"{mnt}/model"]))
                    lcpu.append(cpu_seconds(m.proc.pid) - c0)
                print(f"run {i + 1}: native cold {native[-1]:.3f} s, "
                      f"tier warm {warm[-1]:.3f} s, local bundle {local[-1]:.3f} s",
                      flush=True)
        n, w, lo = median(native), median(warm), median(local)
        pair = median([a / b for a, b in zip(native, warm)])
        print(f"{MIB} MiB model, {RUNS} runs, medians; options {opts}")
        print(f"native cold read (cat of the file): {n:.3f} s, {MIB / n:.0f} MiB/s")
        print(f"disk tier warm read (cat through a fresh mount): {w:.3f} s, "
              f"{MIB / w:.0f} MiB/s")
        print(f"local bundle mounted (cat through the mount, cold): {lo:.3f} s, "
              f"{MIB / lo:.0f} MiB/s")
        print(f"tier / native throughput: {n / w:.2f}x (median of per-run ratios "
              f"{pair:.2f}x); local mount / native: {n / lo:.2f}x; tier / local "
              f"mount: {lo / w:.2f}x")
        print(f"daemon CPU seconds per read (median): tier {median(wcpu):.2f}, "
              f"local bundle {median(lcpu):.2f}")
        print(f"last warm run: disk_tier {t['disk_tier']}; remote requests "
              f"{t['remote']['requests']}")
    finally:
        close_all()
        if not given:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
