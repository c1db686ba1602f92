#!/usr/bin/python3
"""Mount time and RSS right after mounting: the same COUNT small models
(default 10000, 1-37 bytes, in folders of 100) packed as version 1 and as
version 2, each mounted RUNS times (default 11, the two formats in turn)
with the page cache warm, timed from the daemon's start until the
mountpoint answers. Prints medians, and the median of each round's
version 2 / version 1 ratio.
Run as root: scripts/bench-mount.py (COUNT=100000 for the README's number).
"""
import os
import shutil
import subprocess
import tempfile

from benchlib import DAEMON, MIB, PACKER, median, mount_apb, start

COUNT = int(os.environ.get("COUNT", "10000"))
RUNS = int(os.environ.get("RUNS", "11"))


def main():
    start(__doc__, "bench-mount.py", "mounting", (DAEMON, PACKER))
    work = tempfile.mkdtemp(prefix="apb-mount-", dir="/var/tmp")
    try:
        src = f"{work}/models"
        for i in range(COUNT):
            d = f"{src}/d{i % 100:03d}"
            if i < 100:
                os.makedirs(d)
            with open(f"{d}/model{i:06d}.bin", "wb") as f:
                f.write(b"x" * (i % 37 + 1))
        print(f"{COUNT} models, {RUNS} mounts each, medians; "
              f"kernel {os.uname().release}, {os.cpu_count()} cores")
        print("| format | mount ms | min ms | RSS after mount MiB |")
        print("|---|---|---|---|")
        fmts = ("1", "2")
        for fmt in fmts:
            subprocess.run([PACKER, "create", "--format", fmt,
                            f"{work}/v{fmt}.apbundle", src], check=True)
        # The formats take turns, each first every other round, so that
        # the machine's drift (other work, the host) falls on both alike.
        secs = {fmt: [] for fmt in fmts}
        rss = {fmt: [] for fmt in fmts}
        for run in range(RUNS):
            for fmt in fmts if run % 2 == 0 else fmts[::-1]:
                with mount_apb(f"{work}/v{fmt}.apbundle", f"{work}/mnt",
                               "max_memory=64M") as m:
                    secs[fmt].append(m.mount_seconds)
                    rss[fmt].append(m.rss())
        for fmt in fmts:
            print(f"| {fmt} | {median(secs[fmt]) * 1e3:.1f} "
                  f"| {min(secs[fmt]) * 1e3:.1f} "
                  f"| {median(rss[fmt]) / MIB:.1f} |")
        # Each round's two mounts ran back to back: their ratio leaves
        # out most of the drift that moves both.
        ratios = [b / a for a, b in zip(secs["1"], secs["2"])]
        print(f"\nversion 2 / version 1, median of the {RUNS} rounds' "
              f"ratios: {median(ratios):.3f} "
              f"({sum(r < 1 for r in ratios)} of {RUNS} rounds faster)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
