#!/usr/bin/python3
"""Sequential read of one 64 MiB model: through the mount and with `cat` of
the original file, side by side in one run, page cache dropped before each
cold run. Prints medians. Run as root: scripts/bench-seq.py
"""
import os
import subprocess
import tempfile

from benchlib import PACKER, drop_caches, median, mount_apb, timed, write_random

MIB = int(os.environ.get("MODEL_MIB", "64"))
RUNS = int(os.environ.get("RUNS", "7"))


def main():
    work = tempfile.mkdtemp(prefix="apb-seq-", dir="/var/tmp")
    model, bundle = f"{work}/model.bin", f"{work}/b.apbundle"
    mnt = f"{work}/mnt"
    try:
        write_random(model, MIB)
        subprocess.run([PACKER, "create", bundle, f"model={model}"], check=True)
        rows = {"cat original (cold)": [], "apbundlefs (cold)": [],
                "cat original (hot)": [], "apbundlefs (hot, daemon cache)": []}
        with mount_apb(bundle, mnt, "max_memory=128M") as m:
            path = f"{mnt}/model"
            for _ in range(RUNS):
                drop_caches()
                rows["cat original (cold)"].append(timed(["cat", model]))
                rows["cat original (hot)"].append(timed(["cat", model]))
                drop_caches()
                m.control("clear\n")
                rows["apbundlefs (cold)"].append(timed(["cat", path]))
                # the model stays in the daemon's cache; a new open drops
                # the kernel's pages, so this measures the daemon's hits
                rows["apbundlefs (hot, daemon cache)"].append(timed(["cat", path]))
            rss = m.peak_rss()
        size = MIB << 20
        print(f"{MIB} MiB model, {RUNS} runs each, medians; "
              f"kernel {os.uname().release}, {os.cpu_count()} cores")
        print("| read | MB/s | seconds |")
        print("|---|---|---|")
        for name, secs in rows.items():
            s = median(secs)
            print(f"| {name} | {size / s / 1e6:.0f} | {s:.3f} |")
        cold = median(rows["cat original (cold)"]) / median(rows["apbundlefs (cold)"])
        print(f"cold ratio apbundlefs/original: {cold:.2f}; "
              f"daemon peak RSS {rss / 2**20:.1f} MiB")
    finally:
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
