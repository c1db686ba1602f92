#!/usr/bin/python3
"""A/B test of read-path changes: sequential 1 MiB reads of one model
through several apbundlefs variants (builds and/or mount options), every
variant mounted at once and their runs interleaved, so that this host's
drifting disk and memory speeds (docs/PERFORMANCE.md, "Noise") hit all
variants alike. Prints per variant the median MB/s, every run, the CPU
seconds the whole machine spent per run (/proc/stat: user, nice, system,
irq, softirq), and in cold mode the median ratio to a native read of the
same bytes made right before each run. Run as root:

    VARIANTS="old:max_memory=1216M:/tmp/old/build;new:max_memory=1216M" \\
        scripts/bench-ab.py

Environment:
  VARIANTS  NAME:OPTIONS[:BUILD_DIR] separated by ';'. OPTIONS are the -o
            options; a suffix #KB sets the mount's kernel read_ahead_kb
            after the first open. BUILD_DIR defaults to APB_BUILD, then
            build-bench.
  MODE      cold (default: page cache dropped and `clear` before each run)
            or hot (the daemon's cache filled by the previous read)
  RUNS      runs per variant (default 11)
  BUNDLE    default /var/tmp/apb-bench/bundles/big-v1.apbundle (made by
            scripts/bench); MODEL, the path in it, default "model"
  NATIVE    the file the cold runs are paired with (default
            /var/tmp/apb-bench/data/big/model; empty: none)
  DISK      ram: BUNDLE and NATIVE copied to a RAM-backed loop device
            first (benchlib.RamDisk: reads at one speed, no drift)
  DISK_MBPS with DISK=ram: reads from it limited to N MB/s
"""
import os
import shutil
import statistics
import sys
import tempfile

import benchlib
from benchlib import RamDisk, drop_caches, mount_apb

BENCH = "/var/tmp/apb-bench"
RUNS = int(os.environ.get("RUNS", "11"))
MODE = os.environ.get("MODE", "cold")
BUNDLE = os.environ.get("BUNDLE", f"{BENCH}/bundles/big-v1.apbundle")
MODEL = os.environ.get("MODEL", "model")
NATIVE = os.environ.get("NATIVE", f"{BENCH}/data/big/model") if MODE == "cold" else ""
DEFAULT_BUILD = os.environ.get("APB_BUILD", os.path.join(benchlib.ROOT, "build-bench"))
DISK = os.environ.get("DISK", "")
DISK_MBPS = int(os.environ.get("DISK_MBPS") or 0)


def busy_seconds():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def timed_read(path):
    """(MB/s, CPU seconds of the machine) of one whole read of path."""
    size = os.path.getsize(path)
    cpu0 = busy_seconds()
    dt = benchlib.read_seq(path, size)
    return size / dt / 1e6, busy_seconds() - cpu0


def main():
    if os.geteuid() != 0:
        sys.exit("bench-ab.py: run as root (it drops the page cache and mounts)")
    spec = os.environ.get("VARIANTS")
    if not spec or MODE not in ("cold", "hot"):
        sys.exit(__doc__)
    work = tempfile.mkdtemp(prefix="apb-ab-", dir="/var/tmp")
    mounts = []
    ram = None
    bundle, native = BUNDLE, NATIVE
    try:
        if DISK == "ram":
            files = [f for f in (BUNDLE, NATIVE) if f]
            # a fixed root: the next run undoes a killed run's disk
            ram = RamDisk("/var/tmp/apb-ab-ram", sum(os.path.getsize(f) for f in files))
            bundle, *rest = [shutil.copy(f, os.path.join(ram.mnt, f"{i}-{os.path.basename(f)}"))
                             for i, f in enumerate(files)]
            native = rest[0] if rest else ""
            if DISK_MBPS:
                ram.limit(DISK_MBPS)
        for i, v in enumerate(spec.split(";")):
            name, opts, *build = v.split(":", 2)
            opts, _, kb = opts.partition("#")
            mnt = os.path.join(work, f"m{i}")
            m = mount_apb(bundle, mnt, opts, daemon=os.path.join(
                build[0] if build else DEFAULT_BUILD, "fs", "apbundlefs"))
            path = os.path.join(mnt, MODEL)
            mounts.append((name, m, path))
            if kb:
                os.close(os.open(path, os.O_RDONLY))  # the daemon sets its own at the first open
                m.set_read_ahead_kb(int(kb))
            if MODE == "hot":
                timed_read(path)
        rows = {name: [] for name in ["native"] * bool(native) + [n for n, _, _ in mounts]}
        for _ in range(RUNS):
            ref = None
            # every cache cleared first, so that the native read, too, gets
            # just-freed memory; no variant is read before its own turn
            if MODE == "cold":
                for _, m, _ in mounts:
                    m.control("clear\n")
            if native:
                drop_caches()
                ref = timed_read(native)
                rows["native"].append(ref + (None,))
            for name, m, path in mounts:
                if MODE == "cold":
                    drop_caches()
                mbps, cpu = timed_read(path)
                rows[name].append((mbps, cpu, mbps / ref[0] if ref else None))
        print(f"{MODE}, {RUNS} runs each, interleaved; {BUNDLE}:{MODEL}"
              + (f" on {ram.describe()}" if ram else ""))
        for name, r in rows.items():
            mbps, cpu, ratio = zip(*r)
            line = (f"{name:16} {statistics.median(mbps):6.0f} MB/s  "
                    f"cpu {statistics.median(cpu):.2f} s")
            if ratio[0] is not None:
                line += f"  / native {statistics.median(ratio):.2f}"
            print(line)
            print("    MB/s " + " ".join(f"{x:.0f}" for x in mbps))
            print("    cpu  " + " ".join(f"{x:.2f}" for x in cpu))
    finally:
        for _, m, _ in mounts:
            m.close()
        if ram:
            ram.close()
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
