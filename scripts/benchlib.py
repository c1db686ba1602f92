"""Shared pieces of the benchmark scripts: paths, mounting, cache control,
timed reads.

Benchmarks run as root (they drop the page cache) from a built tree.
"""
import hashlib
import json
import mmap
import os
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("APB_BUILD", os.path.join(ROOT, "build"))
DAEMON = os.path.join(BUILD, "fs", "apbundlefs")
PACKER = os.path.join(BUILD, "apbundle", "apbundle")
MIB = 1 << 20


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through every finally


def handle_signals():
    """SIGINT, SIGTERM and SIGHUP end the script by an exception, so that
    every finally (and close_all()) runs and nothing stays mounted. SIGINT
    explicitly: a shell that starts a job in the background may have set it
    to be ignored, and Python keeps an inherited SIG_IGN."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)


def start(doc, name, root_for, programs=()):
    """What a benchmark script does first: with an argument, print doc and
    exit (0 for -h or --help, 2 for anything else); exit unless it runs as
    root (needed for root_for) and every one of programs is built; then
    handle_signals()."""
    if len(sys.argv) > 1:
        print(doc)
        sys.exit(0 if sys.argv[1] in ("-h", "--help") else 2)
    if os.geteuid() != 0:
        sys.exit(f"{name}: run as root ({root_for})")
    for exe in programs:
        if not os.access(exe, os.X_OK):
            sys.exit(f"{name}: {exe} is not built (ninja -C build, or APB_BUILD=DIR)")
    handle_signals()


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def write_random(path, mib):
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))


def log(*a):
    """Progress on stderr, at once (stdout may be a report or a pipe)."""
    print(*a, file=sys.stderr, flush=True)


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


# ---------------------------------------------------------------- what was measured

def cpu_model():
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f
                     if line.startswith("model name")), "?")


def machine_summary():
    """CPU, cores and kernel, for a report's header."""
    return f"{cpu_model()}, {os.cpu_count()} cores, kernel {os.uname().release}"


def source_tree():
    """The sources BUILD was built from: git describe of its meson source
    directory, and with uncommitted changes to the C sources a hash of that
    diff (the commit alone would not say what was measured)."""
    try:
        with open(os.path.join(BUILD, "meson-info", "meson-info.json")) as f:
            src = json.load(f)["directories"]["source"]
    except (OSError, ValueError, KeyError):
        return "unknown"

    def git(*a):
        return subprocess.run(["git", "-C", src, *a], capture_output=True,
                              text=True).stdout.strip()
    tree = f"{src} at {git('describe', '--always', '--dirty') or 'unknown'}"
    diff = git("diff", "HEAD", "--", "core", "apbundle", "fs", "include")
    if diff:
        tree += (", uncommitted changes to " + ", ".join(git("diff", "HEAD", "--name-only", "--",
                 "core", "apbundle", "fs", "include").split()) +
                 f" (diff sha1 {hashlib.sha1(diff.encode()).hexdigest()[:10]})")
    return tree


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

    def _status_bytes(self, field):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return None

    def peak_rss(self):
        """VmHWM of the daemon in bytes."""
        return self._status_bytes("VmHWM")

    def rss(self):
        """VmRSS of the daemon in bytes."""
        return self._status_bytes("VmRSS")

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


# ---------------------------------------------------------------- a steady disk

def run_quiet(argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


class RamDisk:
    """An ext4 file system at ROOT/disk with room for content_bytes of files,
    on a loop device whose backing file lives in a tmpfs (ROOT/tmpfs) sized
    for it: a disk that reads at the
    same speed every time, with none of the drift of this host's virtual
    disk (docs/PERFORMANCE.md, "Noise"). The page cache of the ext4 is
    dropped as usual; the tmpfs, which drop_caches does not touch, is the
    medium.

    limit(mbps) then limits reads from the device to that many MB/s with
    the block cgroup (cgroup v1 blkio.throttle.read_bps_device, or v2
    io.max), which this process joins, so that every process it starts
    from then on (daemons, readers, fio) shares the limit, as they would
    share one disk's bandwidth.

    close() undoes it all, and may be called twice; a RamDisk left by a
    process that was killed is undone by the next one on the same ROOT."""

    @staticmethod
    def size_for(content_bytes):
        """The memory a RamDisk for content_bytes takes: the files, ext4's
        own metadata and reserve, and a margin."""
        return (content_bytes * 11 // 10 + 256 * MIB) // MIB * MIB

    def __init__(self, root, content_bytes):
        size_bytes = self.size_bytes = self.size_for(content_bytes)
        self.root = root
        self.tmpfs = os.path.join(root, "tmpfs")
        self.mnt = os.path.join(root, "disk")
        self.image = os.path.join(self.tmpfs, "disk.img")
        self.loop = None
        self.cgroup = None  # (our cgroup.procs, the one we came from)
        self.read_mbps = None
        self.undo()
        DISKS.append(self)
        try:
            os.makedirs(self.tmpfs, exist_ok=True)
            os.makedirs(self.mnt, exist_ok=True)
            run_quiet(["mount", "-t", "tmpfs", "-o", f"size={size_bytes + MIB}",
                       "apb-bench-ram", self.tmpfs])
            with open(self.image, "wb") as f:
                f.truncate(size_bytes)
            self.loop = run_quiet(["losetup", "--find", "--show", self.image])
            run_quiet(["mkfs.ext4", "-q", "-F", "-E",
                       "lazy_itable_init=0,lazy_journal_init=0", self.loop])
            run_quiet(["mount", self.loop, self.mnt])
            rdev = os.stat(self.loop).st_rdev
            self.dev = f"{os.major(rdev)}:{os.minor(rdev)}"
        except Exception:
            self.close()
            raise

    def limit(self, mbps):
        self.cgroup = limit_reads(self.dev, mbps)
        self.read_mbps = mbps

    def describe(self):
        what = f"{self.loop}, ext4 on a loop device backed by tmpfs"
        if self.read_mbps:
            what += f", reads limited to {self.read_mbps} MB/s by the block cgroup"
        return what

    def undo(self):
        if self.cgroup:
            unlimit(*self.cgroup)
            self.cgroup = None
        if os.path.ismount(self.mnt):
            subprocess.run(["umount", self.mnt], capture_output=True)
        if os.path.exists(self.image):  # this one's loop, or a killed run's
            for line in run_quiet(["losetup", "-j", self.image]).splitlines():
                subprocess.run(["losetup", "-d", line.split(":")[0]], capture_output=True)
        if os.path.ismount(self.tmpfs):
            subprocess.run(["umount", self.tmpfs], capture_output=True)
        self.loop = None

    def close(self):
        if self in DISKS:
            DISKS.remove(self)
        self.undo()


DISKS = []  # every RamDisk not yet closed


CG_V1 = "/sys/fs/cgroup/blkio"
CG_V2 = "/sys/fs/cgroup"


def v2_controllers():
    try:
        with open(os.path.join(CG_V2, "cgroup.controllers")) as f:
            return f.read().split()
    except FileNotFoundError:  # no cgroup v2 mounted there
        return []


def limit_reads(dev, mbps):
    """Join a new cgroup that limits reads from block device dev ("MAJ:MIN")
    to mbps MB/s: (its cgroup.procs, the cgroup.procs to go back to)."""
    bps = int(mbps * 1e6)
    if os.path.exists(os.path.join(CG_V1, "blkio.throttle.read_bps_device")):
        base, limit = CG_V1, ("blkio.throttle.read_bps_device", f"{dev} {bps}")
    elif "io" in v2_controllers():
        base, limit = CG_V2, ("io.max", f"{dev} rbps={bps}")
        with open(os.path.join(CG_V2, "cgroup.subtree_control"), "w") as f:
            f.write("+io")
    else:
        raise RuntimeError("no block cgroup (blkio in v1, io in v2) to limit reads")
    back = None
    with open(f"/proc/{os.getpid()}/cgroup") as f:
        for line in f:
            hier, ctl, path = line.rstrip("\n").split(":", 2)
            if (base == CG_V1 and "blkio" in ctl.split(",")) or (base == CG_V2 and hier == "0"):
                back = os.path.join(base, path.lstrip("/"), "cgroup.procs")
    if back is None:
        raise RuntimeError(f"this process is in no cgroup of {base} (/proc/self/cgroup)")
    cg = os.path.join(base, "apb-bench")
    os.makedirs(cg, exist_ok=True)
    with open(os.path.join(cg, limit[0]), "w") as f:
        f.write(limit[1])
    procs = os.path.join(cg, "cgroup.procs")
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
    return procs, back


def unlimit(procs, back):
    with open(back, "w") as f:
        f.write(str(os.getpid()))
    try:
        os.rmdir(os.path.dirname(procs))
    except OSError:  # a process of ours still in it: it goes when they do
        pass


# ---------------------------------------------------------------- memory cgroups

CG_MEM_V1 = "/sys/fs/cgroup/memory"
CGROUPS = []  # every MemCgroup not yet removed


class MemCgroup:
    """A memory cgroup NAME (e.g. apb-llama-reader) with limit bytes (None: no limit);
    argv(cmd) runs cmd inside it. v1 (memory.limit_in_bytes) where mounted,
    else v2 (memory.max; io_max, "MAJ:MIN rbps=N", is written too, since a
    v2 process has one cgroup for both). close() kills what is left in it
    and removes it; a cgroup left by a killed run is removed on creation."""

    def __init__(self, name, limit, io_max=None):
        if os.path.exists(os.path.join(CG_MEM_V1, "memory.limit_in_bytes")):
            self.path = os.path.join(CG_MEM_V1, name)
            self.limit_file, self.peak_file = "memory.limit_in_bytes", "memory.max_usage_in_bytes"
            self.usage_file = "memory.usage_in_bytes"
        elif "memory" in v2_controllers():
            with open("/sys/fs/cgroup/cgroup.subtree_control", "w") as f:
                f.write("+memory" + (" +io" if io_max else ""))
            self.path = os.path.join(CG_V2, name)
            self.limit_file, self.peak_file = "memory.max", "memory.peak"
            self.usage_file = "memory.current"
        else:
            raise RuntimeError("no memory cgroup (v1 memory or v2 memory controller)")
        self.close()
        os.mkdir(self.path)
        CGROUPS.append(self)
        if limit is not None:
            self.write(self.limit_file, str(limit))
        if io_max and self.limit_file == "memory.max":
            self.write("io.max", io_max)

    def write(self, name, text):
        with open(os.path.join(self.path, name), "w") as f:
            f.write(text + "\n")

    def argv(self, cmd):
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"',
                os.path.join(self.path, "cgroup.procs")] + list(cmd)

    def peak(self):
        with open(os.path.join(self.path, self.peak_file)) as f:
            return int(f.read())

    def usage(self):
        """Bytes charged to the cgroup now (its processes' memory and the
        page cache they brought in)."""
        with open(os.path.join(self.path, self.usage_file)) as f:
            return int(f.read())

    def reset_peak(self):
        """peak() from now on: v1 only (v2's memory.peak cannot be reset
        before Linux 6.12); False where it cannot."""
        if self.peak_file != "memory.max_usage_in_bytes":
            return False
        self.write(self.peak_file, "0")
        return True

    def close(self):
        if self in CGROUPS:
            CGROUPS.remove(self)
        if not os.path.isdir(self.path):
            return
        for _ in range(100):
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
            if not pids:
                break
            for pid in pids:
                print(f"cleanup: killing {pid} left in {self.path}", file=sys.stderr, flush=True)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)  # the kernel takes a moment to empty the cgroup
        os.rmdir(self.path)


def _close_each(objs, where):
    """close() each of objs (a live list, copied first: close() removes
    from it), going on past a failure, which it names by where(obj)."""
    for o in list(objs):
        try:
            o.close()
        except Exception as e:  # go on closing the others
            print("cleanup:", where(o), e, file=sys.stderr, flush=True)


def close_cgroups():
    """Every MemCgroup not yet removed."""
    _close_each(CGROUPS, lambda cg: cg.path)


def close_mounts():
    """Every mount not yet closed."""
    _close_each(LIVE, lambda m: m.mnt)


def close_disks():
    """Every RamDisk not yet closed."""
    _close_each(DISKS, lambda d: d.root)


def close_all():
    """Every mount, then every memory cgroup (daemons may live in one),
    then every RamDisk (mounts may read from them)."""
    close_mounts()
    close_cgroups()
    close_disks()
