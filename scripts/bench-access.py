#!/usr/bin/python3
"""What each way of reading a model costs on the mount: read(), mmap and
O_DIRECT, sequential (1 MiB reads; for mmap one touch per 4 KiB page in
order) and random (RANDOM 4 KiB reads, or page touches, at seeded
offsets), on a SIZE MiB model (default 64; random bytes, version 2, raw),
against the same file on the local disk.

Cases, each RUNS times (default 3; medians printed):
  cold      page cache dropped, `clear` written to .control: every byte
            comes from the bundle
  warm      read again through a new open: the daemon's cache holds the
            model (max_memory=256M), the kernel's pages of the file are
            dropped at the open (kernel_cache off)
  warm kc   the same with -o kernel_cache: the kernel keeps the pages
  small     cold, with max_memory=16M (a quarter of the model)
For each: MB/s (sequential) or microseconds per read (random), the FUSE
READ requests the daemon answered per MiB read (sequential) or per read
(random), and the bundle bytes read per byte (.stats).
Run as root (it drops the page cache): scripts/bench-access.py
"""
import mmap
import os
import random
import shutil
import subprocess
import tempfile
import time

from benchlib import (DAEMON, MIB, PACKER, close_all, drop_caches, median, mount_apb, start,
                      write_random)

SIZE = int(os.environ.get("SIZE", "64"))
RUNS = int(os.environ.get("RUNS", "3"))
RANDOM = int(os.environ.get("RANDOM", "2000"))
PAGE = 4096


def offsets(size):
    rng = random.Random(17)
    return [rng.randrange(0, size // PAGE) * PAGE for _ in range(RANDOM)]


def seq_read(path, size):
    buf = mmap.mmap(-1, MIB)
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < size:
            n = os.preadv(fd, [buf], done)
            if n <= 0:
                raise RuntimeError("%s: short read at %d" % (path, done))
            done += n
    finally:
        os.close(fd)


def seq_direct(path, size):
    buf = mmap.mmap(-1, MIB)          # page-aligned, as O_DIRECT wants
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        for off in range(0, size, MIB):
            if os.preadv(fd, [buf], off) <= 0:
                raise RuntimeError("%s: short read at %d" % (path, off))
    finally:
        os.close(fd)


def seq_mmap(path, size):
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
        try:
            s = 0
            for off in range(0, size, PAGE):
                s += m[off]
        finally:
            m.close()


def rand_read(path, offs, flags=0):
    buf = mmap.mmap(-1, PAGE)
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        for off in offs:
            os.preadv(fd, [buf], off)
    finally:
        os.close(fd)


def rand_direct(path, offs):
    rand_read(path, offs, os.O_DIRECT)


def rand_mmap(path, offs):
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), os.fstat(f.fileno()).st_size, prot=mmap.PROT_READ)
        try:
            s = 0
            for off in offs:
                s += m[off]
        finally:
            m.close()


STYLES = [("read", seq_read, rand_read), ("mmap", seq_mmap, rand_mmap),
          ("O_DIRECT", seq_direct, rand_direct)]


def measure(fn, path, arg, m=None):
    """(seconds, FUSE read requests, bundle bytes) of one run of fn."""
    before = m.stats()["io"] if m else None
    t0 = time.perf_counter()
    fn(path, arg)
    dt = time.perf_counter() - t0
    if not m:
        return dt, None, None
    after = m.stats()["io"]
    return (dt, after["read_requests"] - before["read_requests"],
            after["backing_bytes_read"] - before["backing_bytes_read"])


def row(label, runs, size, nreads):
    secs = median([r[0] for r in runs])
    reqs = median([r[1] for r in runs])
    back = median([r[2] for r in runs])
    if nreads is None:           # sequential
        speed = "%8.0f MB/s" % (size / secs / 1e6)
        per = "%6.2f req/MiB" % (reqs / (size / MIB)) if reqs is not None else ""
    else:
        speed = "%8.1f us/read" % (secs / nreads * 1e6)
        per = "%6.2f req/read" % (reqs / nreads) if reqs is not None else ""
    bb = "%5.2f bundle B/B" % (back / (size if nreads is None else nreads * PAGE)) \
        if back is not None else ""
    print("  %-22s %s  %s  %s" % (label, speed, per, bb), flush=True)


def main():
    start(__doc__, "bench-access.py", "dropping the page cache", (DAEMON, PACKER))
    work = tempfile.mkdtemp(prefix="apb-access-", dir="/var/tmp")
    try:
        size = SIZE * MIB
        model = os.path.join(work, "model.bin")
        write_random(model, SIZE)
        bundle = os.path.join(work, "m.apbundle")
        subprocess.run([PACKER, "create", bundle, "model.bin=" + model], check=True,
                       stdout=subprocess.DEVNULL)
        offs = offsets(size)
        print("model %d MiB, v2 raw; %d runs, medians; %d random 4 KiB reads" %
              (SIZE, RUNS, RANDOM), flush=True)
        for kind in ("sequential", "random"):
            for name, seq, rnd in STYLES:
                fn, arg, n = (seq, size, None) if kind == "sequential" else (rnd, offs, RANDOM)
                print("%s %s" % (kind, name), flush=True)
                runs = []
                for _ in range(RUNS):
                    drop_caches()
                    runs.append(measure(fn, model, arg))
                row("local cold", runs, size, n)
                runs = [measure(fn, model, arg) for _ in range(RUNS)]
                row("local warm", runs, size, n)
                for label, opts in (("", "max_memory=256M"),
                                    (" kc", "max_memory=256M,kernel_cache")):
                    mnt = os.path.join(work, "mnt")
                    with mount_apb(bundle, mnt, opts) as m:
                        path = os.path.join(mnt, "model.bin")
                        cold, warm = [], []
                        for _ in range(RUNS):
                            m.control("clear\n")
                            drop_caches()
                            cold.append(measure(fn, path, arg, m))
                            warm.append(measure(fn, path, arg, m))
                        if not label:
                            row("mount cold", cold, size, n)
                        row("mount warm" + label, warm, size, n)
                mnt = os.path.join(work, "mnt")
                with mount_apb(bundle, mnt, "max_memory=16M") as m:
                    path = os.path.join(mnt, "model.bin")
                    runs = []
                    for _ in range(RUNS):
                        m.control("clear\n")
                        drop_caches()
                        runs.append(measure(fn, path, arg, m))
                    row("mount small cold", runs, size, n)
    finally:
        close_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
