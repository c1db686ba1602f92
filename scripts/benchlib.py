"""Shared pieces of the benchmark scripts: paths, mounting, cache control.

Benchmarks run as root (they drop the page cache) from a built tree.
"""
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("APB_BUILD", os.path.join(ROOT, "build"))
DAEMON = os.path.join(BUILD, "fs", "apbundlefs")
PACKER = os.path.join(BUILD, "core", "apbundle")


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def write_random(path, mib):
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))


def median(xs):
    return statistics.median(xs)


class Mount:
    """apbundlefs -f in the background; close() always unmounts."""

    def __init__(self, bundle, mnt, opts, timeout=10.0):
        self.mnt = mnt
        self.proc = subprocess.Popen([DAEMON, "-f", "-o", opts, bundle, mnt],
                                     stderr=subprocess.PIPE)
        end = time.monotonic() + timeout
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None:
                sys.exit("apbundlefs exited: " + self.proc.stderr.read().decode())
            if time.monotonic() > end:
                self.close()
                sys.exit("mount did not appear")
            time.sleep(0.01)

    def stats(self):
        with open(os.path.join(self.mnt, ".stats")) as f:
            return json.load(f)

    def control(self, text):
        with open(os.path.join(self.mnt, ".control"), "w") as f:
            f.write(text)

    def peak_rss(self):
        """VmHWM of the daemon in bytes."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def close(self):
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", self.mnt], check=False)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
