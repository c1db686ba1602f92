"""Shared pieces of the benchmark scripts: paths, mounting, cache control,
timed reads.

Benchmarks run as root (they drop the page cache) from a built tree.
"""
import json
import mmap
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("APB_BUILD", os.path.join(ROOT, "build"))
DAEMON = os.path.join(BUILD, "fs", "apbundlefs")
PACKER = os.path.join(BUILD, "core", "apbundle")
MIB = 1 << 20


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def write_random(path, mib):
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))


def median(xs):
    """The median of the values that are not None; None if there are none."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def read_seq(path, expect=None):
    """Seconds to read path from start to end with 1 MiB read()s into one
    buffer; RuntimeError if expect is given and that many bytes were not
    read."""
    buf = mmap.mmap(-1, MIB)
    fd = os.open(path, os.O_RDONLY)
    total = 0
    try:
        t0 = time.perf_counter()
        while True:
            n = os.readv(fd, [buf])
            if n <= 0:
                break
            total += n
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
    if expect is not None and total != expect:
        raise RuntimeError(f"{path}: read {total} bytes, expected {expect}")
    return dt


def timed(argv):
    """Seconds that the command argv takes; its standard output is thrown
    away."""
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def build_fuse_tool(name, out):
    """Compile scripts/benchsrc/NAME.c, a libfuse program, into out."""
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"],
                           capture_output=True, text=True, check=True).stdout.split()
    subprocess.run(["cc", "-std=c11", "-O2", "-D_GNU_SOURCE", "-D_FILE_OFFSET_BITS=64",
                    "-Wall", "-Wextra", "-o", out,
                    os.path.join(ROOT, "scripts", "benchsrc", name + ".c")] + flags,
                   check=True)
    return out


# ---------------------------------------------------------------- mounts

LIVE = []  # every mount not yet closed; close_all() closes them


def mounted_dev(mnt):
    """The device of the mount on top of mnt (a FUSE mount's bdi name)."""
    dev = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            p = line.split()
            if p[4] == mnt:
                dev = p[2]
    return dev


class Mount:
    """A FUSE daemon started in the foreground, logging to LOGDIR/MNT.log
    (LOGDIR: the folder that holds mnt unless given); close() always
    unmounts and reaps it, and may be called twice."""

    def __init__(self, argv, mnt, logdir=None, timeout=30.0):
        self.mnt = mnt
        os.makedirs(mnt, exist_ok=True)
        self.logpath = os.path.join(logdir or os.path.dirname(mnt),
                                    os.path.basename(mnt) + ".log")
        with open(self.logpath, "ab") as logf:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=logf)
        LIVE.append(self)
        end = time.monotonic() + timeout
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.close()
                with open(self.logpath) as f:
                    tail = f.read().strip().splitlines()[-1:]
                raise RuntimeError(f"{' '.join(argv)}: no mount: {tail}")
            time.sleep(0.001)
        self.mount_seconds = time.perf_counter() - t0

    def reset_peak(self):
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5\n")  # VmHWM back to the current RSS

    def peak_rss(self):
        """VmHWM of the daemon in bytes."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return None

    def read_ahead_kb(self):
        try:
            with open(f"/sys/class/bdi/{mounted_dev(self.mnt)}/read_ahead_kb") as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    def set_read_ahead_kb(self, kb):
        with open(f"/sys/class/bdi/{mounted_dev(self.mnt)}/read_ahead_kb", "w") as f:
            f.write(f"{kb}\n")

    def control(self, text):
        with open(os.path.join(self.mnt, ".control"), "w") as f:
            f.write(text)

    def stats(self):
        with open(os.path.join(self.mnt, ".stats")) as f:
            return json.load(f)

    def close(self):
        if self in LIVE:
            LIVE.remove(self)
        for lazy in (False, False, False, True):
            if not os.path.ismount(self.mnt):
                break
            r = subprocess.run(["fusermount3", "-uz" if lazy else "-u", self.mnt],
                               capture_output=True)
            if r.returncode != 0 and not lazy:
                time.sleep(0.2)  # busy: a reader still finishing
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def mount_apb(bundle, mnt, opts, daemon=DAEMON, logdir=None):
    """apbundlefs -f -o opts bundle mnt."""
    return Mount([daemon, "-f", "-o", opts, bundle, mnt], mnt, logdir)


def close_all():
    for m in list(LIVE):
        try:
            m.close()
        except Exception as e:  # go on closing the others
            print("cleanup:", m.mnt, e, file=sys.stderr, flush=True)
