"""Shared fixtures for the end-to-end tests of apbundlefs and apbundle.

One way to mount: `mount(bundle, ...)` (a context manager, also handed out by
the `mount` fixture). It starts `apbundlefs -f`, waits (with a timeout, never a
fixed sleep) until the mount appears in /proc/self/mountinfo, fails with the
daemon's stderr if the daemon exits first, yields a `Daemon`, and in `finally`
always stops it: SIGTERM (which the contract says unmounts and exits 0), then
SIGKILL if it hangs, then `fusermount3 -u` / `-uz` if a mount is still there.

Guards against leaks and hangs:
- every test checks on teardown that it left no daemon and no mount behind;
- the session checks at the end that no apbundlefs process started under the
  session's temp dir and no fuse mount below it remain (and cleans them up);
- a per-test watchdog (default TEST_TIMEOUT_S, marker `timeout_s(N)`) kills the
  test's daemons with SIGKILL when a test hangs, which makes every blocked
  FUSE syscall fail (ENOTCONN) so the test errors out instead of hanging CI.

Binaries come from $APB_BUILD_DIR (default: <repo>/build).

Where a mounted bundle comes from: $APB_E2E_SOURCE, `local` (default: the
file itself), `nginx` or `rgw`. With a server, every daemon started on a
bundle file (start_daemon, hence mount() and run_daemon_expect_failure)
mounts that file's URL instead: the file is first published to the
session's server (nginx: hard-linked into its directory; RGW: PUT, and the
s3_endpoint/s3_region options and the gateway's keys given to the daemon),
under a name derived from its path, and withdrawn when the last daemon on
it stops. Tests that need the bundle to be a local file carry the marker
`local_only(reason)` and are skipped there. With a server and
$APB_E2E_CACHE_DIR=1, every such daemon also gets the disk tier
(cache_dir= one directory for the session, cache_dir_size=256M), so the
read checks run through it, warm for every mount after a bundle's first.
"""

import contextlib
import errno
import json
import mmap
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import apbformat  # noqa: E402
from remote import fault_proxy, nginx_server, rgw_server, s3_env  # noqa: E402,F401 (real servers)

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("APB_BUILD_DIR", REPO / "build")).resolve()
APBUNDLEFS = BUILD / "fs" / "apbundlefs"
APBUNDLE = BUILD / "apbundle" / "apbundle"

MOUNT_TIMEOUT_S = 15.0      # daemon start until the mount shows up
STOP_TIMEOUT_S = 10.0       # SIGTERM until the daemon has exited
TEST_TIMEOUT_S = 180.0      # per-test watchdog, see marker timeout_s

KiB = 1024
MiB = 1024 * 1024

SOURCE = os.environ.get("APB_E2E_SOURCE", "local")
CACHE_DIR = os.environ.get("APB_E2E_CACHE_DIR") == "1"
SOURCES = ("local", "nginx", "rgw")

_BASE = None                # session temp root, set by _session_guard
_LIVE = set()               # Daemon objects not yet stopped
_LIVE_LOCK = threading.Lock()


# --------------------------------------------------------------------------
# small helpers

def wait_until(cond, timeout, interval=0.01, what="condition"):
    """Poll cond() until it returns a truthy value; return it or raise."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def _unescape_mountinfo(s):
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 3 < len(s) and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _fuse_mountinfo():
    """(mount point, super options) of every fuse filesystem visible to us
    (no syscalls that touch the filesystems themselves, so this never hangs
    on a dead daemon)."""
    res = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _, opts = right.split(" ")[:3]
            if fstype.startswith("fuse"):
                res.append((_unescape_mountinfo(left.split(" ")[4]),
                            opts.strip().split(",")))
    return res


def fuse_mounts():
    """Mount points of every fuse filesystem visible to us."""
    return [m for m, _ in _fuse_mountinfo()]


def mount_options(mnt):
    """The super options (allow_other, default_permissions, ...) of the fuse
    mount at mnt; [] if nothing is mounted there."""
    mnt = os.path.realpath(str(mnt))
    return next((opts for m, opts in _fuse_mountinfo() if m == mnt), [])


def is_mounted(mnt):
    return os.path.realpath(str(mnt)) in fuse_mounts()


def _under(path, root):
    path, root = os.path.realpath(str(path)), os.path.realpath(str(root))
    return path == root or path.startswith(root + os.sep)


def fusermount_u(mnt, lazy=False):
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(mnt)]
    try:
        return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=10).returncode
    except subprocess.TimeoutExpired:
        return -1


def vm_status(pid, key):
    """A kB value from /proc/PID/status (VmRSS, VmHWM, ...) in bytes."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def odirect_pread(fd, length, offset):
    """pread through an fd opened with O_DIRECT, using a page-aligned buffer."""
    buf = mmap.mmap(-1, max(apbformat.align_up(length), 4096))
    try:
        n = os.preadv(fd, [memoryview(buf)[:length]], offset)
        return bytes(buf[:n])
    finally:
        buf.close()


def run_on_pty(argv, env=None, timeout=120):
    """Run argv with stdin, stdout and stderr a new pseudo-terminal, as from
    an interactive shell; (exit status, everything written to the
    terminal). Fails if the terminal stays silent for timeout seconds."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its terminal is the pty
        try:
            os.execve(argv[0], [str(a) for a in argv], os.environ if env is None else env)
        finally:
            os._exit(127)
    try:
        out = read_terminal(fd, timeout)
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def read_terminal(fd, timeout=120):
    """Everything written to the pseudo-terminal whose master is fd, until
    the last process with it open closes it. Fails if it stays silent for
    timeout seconds."""
    out = b""
    while True:
        r, _, _ = select.select([fd], [], [], timeout)
        assert r, out
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every process closed the terminal
            break
        if not chunk:
            break
        out += chunk
    return out


def stored_sizes(bundle):
    """{name: stored size} of the entries `apbundle list` shows for bundle."""
    lines = run_apbundle("list", bundle, check=True).stdout.splitlines()[1:]
    return {f[0]: int(f[2]) for f in (line.split() for line in lines)}


def check_paged(st, budget, size, stored):
    """.stats of a mount with max_memory=budget bytes that served a file of
    size bytes (stored bytes in the bundle) to a program: the cache was
    smaller than the file, stayed in its budget, evicted, and read every
    stored byte from the bundle without an error."""
    assert st["cache"]["memory_limit"] == budget < size
    assert st["cache"]["memory_used"] <= st["cache"]["memory_limit"]
    assert st["cache"]["evictions"] > 0, "no eviction: the cache did not page"
    assert st["io"]["backing_bytes_read"] >= stored
    assert st["io"]["errors"] == 0


def run_program(*args):
    """tests/e2e/programs.py ARGS (a real program's load and inference, in
    a process of its own): the JSON of its last line of output."""
    programs = Path(__file__).resolve().parent / "programs.py"
    p = subprocess.run([sys.executable, str(programs)] + [str(a) for a in args],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=120)
    assert p.returncode == 0, "programs.py %s failed (%d):\n%s" % (
        " ".join(map(str, args)), p.returncode, p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


def read_all(path, bufsize=MiB):
    """Read a file start to end in bufsize reads, as a loader would."""
    out = bytearray()
    with open(str(path), "rb", buffering=0) as f:
        while True:
            b = f.read(bufsize)
            if not b:
                return bytes(out)
            out += b


def open_direct(path):
    return os.open(str(path), os.O_RDONLY | os.O_DIRECT)


def direct_read(path, length, offset):
    """One O_DIRECT open, pread and close: one request that reaches the
    daemon whatever the kernel has cached."""
    fd = open_direct(path)
    try:
        return odirect_pread(fd, length, offset)
    finally:
        os.close(fd)


def run_apbundle(*args, check=False, timeout=120, **kw):
    """Run the packer; returns CompletedProcess with text stdout/stderr."""
    p = subprocess.run([str(APBUNDLE)] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout, **kw)
    if check and p.returncode != 0:
        pytest.fail("apbundle %s failed (%d):\n%s%s" % (
            " ".join(map(str, args)), p.returncode, p.stdout, p.stderr))
    return p


def pack(out, *inputs, fmt=None, compress=None, block_size=None, threads=None):
    """`apbundle create [--format FMT] [--compress C] [--block-size N] OUT INPUT...`
    (APB_THREADS=threads when given); fails the test on error. Without fmt
    the default format (2) is written."""
    args = ["create"]
    if fmt is not None:
        args += ["--format", str(fmt)]
    if compress is not None:
        args += ["--compress", compress]
    if block_size is not None:
        args += ["--block-size", str(block_size)]
    env = None
    if threads is not None:
        env = dict(os.environ, APB_THREADS=str(threads))
    run_apbundle(*args, out, *inputs, check=True, env=env)
    return Path(out)


def write_sources(directory, models):
    """Write {name: bytes} below directory (creating subdirs); return paths."""
    paths = {}
    for name, data in models.items():
        p = Path(directory) / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        paths[name] = p
    return paths


# --------------------------------------------------------------------------
# the daemon

# what the daemon logs at mount and at unmount (fs/main.c)
_MOUNT_LOG_LINES = ("apbundlefs: mounted ", "apbundlefs: unmounted ")
# the labels .metrics puts first on every series (docs/USAGE.md, ".metrics")
_MOUNT_LABELS = re.compile(r'\{bundle="((?:[^"\\]|\\.)*)",mountpoint="((?:[^"\\]|\\.)*)"')


class Daemon:
    def __init__(self, bundle, mnt, proc, log_path, source=None, unpublish=None):
        self.bundle, self.mnt, self.proc, self.log_path = Path(bundle), Path(mnt), proc, log_path
        self.source = source if source is not None else str(bundle)   # what was mounted
        self._unpublish = unpublish  # withdraws the published bundle (remote sources)
        self.started_ns = self.mounted_ns = None   # wall clock before start, once mounted
        self.killed = False          # needed SIGKILL to go away
        self.stop_note = ""
        self.persistent = False      # owned by a module-scoped fixture

    @property
    def pid(self):
        return self.proc.pid

    def log_all(self):
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def log(self):
        """The daemon's stderr without the line every mount logs when it
        comes up and the one at unmount (test_operate.py checks those)."""
        return "".join(line for line in self.log_all().splitlines(True)
                       if not line.startswith(_MOUNT_LOG_LINES))

    def path(self, name=""):
        return self.mnt / name if name else self.mnt

    def stats(self):
        with open(self.mnt / ".stats") as f:
            return json.load(f)

    def metrics_raw(self):
        with open(self.mnt / ".metrics") as f:
            return f.read()

    def metrics(self):
        """.metrics with the mount's labels taken out of every series, after
        checking that every series carries them, first, the mountpoint this
        one and the bundle one value throughout: `name value` and
        `name{model="m"} value` as a single mount's text reads."""
        out, bundles = [], set()
        for line in self.metrics_raw().splitlines(True):
            if line.startswith("#"):
                out.append(line)
                continue
            mo = _MOUNT_LABELS.search(line)
            assert mo, "series without the mount's labels: %r" % line
            mnt = re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)),
                         mo.group(2))
            assert mnt == os.path.realpath(self.mnt), line
            bundles.add(mo.group(1))
            rest = line[mo.end():]
            out.append(line[:mo.start()] + ("{" + rest[1:] if rest.startswith(",")
                                            else rest[1:]))
        assert len(bundles) == 1, "several bundle labels: %r" % bundles
        return "".join(out)

    def control(self, line):
        """Write one command line to .control; OSError carries the errno."""
        fd = os.open(str(self.mnt / ".control"), os.O_WRONLY)
        try:
            data = (line + "\n").encode()
            n = os.write(fd, data)
            assert n == len(data), "short write to .control: %d of %d" % (n, len(data))
        finally:
            os.close(fd)

    def stop(self):
        """Stop for good: SIGTERM, SIGKILL, lazy unmount. Never raises."""
        p = self.proc
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.stop_note = "daemon ignored SIGTERM for %.0fs; killed" % STOP_TIMEOUT_S
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
        if is_mounted(self.mnt):
            if not self.stop_note:
                self.stop_note = "daemon exited but left its mount behind"
            if fusermount_u(self.mnt) != 0:
                fusermount_u(self.mnt, lazy=True)
        unpublish, self._unpublish = self._unpublish, None
        if unpublish is not None:
            unpublish()
        with _LIVE_LOCK:
            _LIVE.discard(self)


def _opts_string(options):
    parts = []
    for k, v in (options or {}).items():
        if v is None or v is False:
            continue
        parts.append(k if v is True else "%s=%s" % (k, v))
    return ",".join(parts)


# --------------------------------------------------------------------------
# remote sources (APB_E2E_SOURCE=nginx|rgw): a bundle file published to the
# session's server and mounted by URL

_SERVER = None              # the session's nginx or RGW, set by _remote_source
_PUBLISHED = {}             # key -> [daemons using it, file identity]
_PUBLISHED_LOCK = threading.Lock()


def _identity(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _publish_key(path):
    """A name on the server unique to the file's path in this session, the
    same on every mount (state files and learned orders key on the URL)."""
    path = os.path.realpath(str(path))
    if _under(path, _BASE):
        path = os.path.relpath(path, os.path.realpath(str(_BASE)))
    return path.strip(os.sep).replace(os.sep, "__")


def _publish(bundle):
    """Publish the bundle file on the session's server; returns (url, extra
    mount options, daemon environment, unpublish). An argument that is not
    a regular file (already a URL, a missing path) is mounted as given."""
    if _SERVER is None or not os.path.isfile(str(bundle)):
        return str(bundle), {}, None, None
    key = _publish_key(bundle)
    ident = _identity(os.stat(str(bundle)))
    with _PUBLISHED_LOCK:
        entry = _PUBLISHED.get(key)
        if entry is None or entry[1] != ident:
            if SOURCE == "nginx":
                # a hard link serves the file as it is (nginx's ETag is its
                # mtime and size); a copy only across file systems
                dst = os.path.join(str(_SERVER.root), key)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(dst)
                try:
                    os.link(str(bundle), dst)
                except OSError as e:
                    if e.errno != errno.EXDEV:
                        raise
                    shutil.copy2(str(bundle), dst)
            else:
                _SERVER.put_object(key, str(bundle))
            entry = _PUBLISHED[key] = [0, ident]
        entry[0] += 1

    def unpublish():
        with _PUBLISHED_LOCK:
            entry[0] -= 1
            if entry[0] > 0 or _PUBLISHED.get(key) is not entry:
                return
            del _PUBLISHED[key]
            with contextlib.suppress(Exception):   # a stopping server
                if SOURCE == "nginx":
                    os.unlink(os.path.join(str(_SERVER.root), key))
                else:
                    _SERVER.delete_object(key)     # memstore space back for later tests

    tier = {}
    if CACHE_DIR:
        tier = {"cache_dir": os.path.join(str(_BASE), "disk-tier"), "cache_dir_size": "256M"}
        os.makedirs(tier["cache_dir"], exist_ok=True)
    if SOURCE == "nginx":
        return _url(key), tier, None, unpublish
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=_SERVER.access_key, AWS_SECRET_ACCESS_KEY=_SERVER.secret_key,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_CONFIG_FILE=os.devnull)
    return (_url(key), dict(tier, s3_endpoint=_SERVER.endpoint, s3_region=_SERVER.region),
            env, unpublish)


def _url(key):
    if SOURCE == "nginx":
        return _SERVER.url(key)
    return "s3://%s/%s" % (_SERVER.bucket, key)


def source_of(bundle):
    """What the daemon mounts for bundle, and names in its messages: the
    path, or with a server the URL it is published under."""
    if _SERVER is None or not os.path.isfile(str(bundle)):
        return str(bundle)
    return _url(_publish_key(bundle))


def check_bundle_mtime(d, st):
    """A mounted file's mtime is its bundle's: the local file's, or for a
    URL the time of the open (docs/DESIGN.md, "Remote reads"), which lies
    between the daemon's start and its mount."""
    if d.source == str(d.bundle):
        assert st.st_mtime_ns == os.stat(str(d.bundle)).st_mtime_ns
    else:
        assert d.started_ns <= st.st_mtime_ns <= (d.mounted_ns or time.time_ns()), (
            d.started_ns, st.st_mtime_ns, d.mounted_ns)


def start_daemon(bundle, mnt, options=None, extra_args=(), foreground=True):
    log_path = Path(tempfile.mkstemp(prefix="apbundlefs-", suffix=".log",
                                     dir=str(_BASE or tempfile.gettempdir()))[1])
    source, source_opts, env, unpublish = _publish(bundle)
    cmd = [str(APBUNDLEFS)] + (["-f"] if foreground else [])
    o = _opts_string(dict(options or {}, **source_opts))
    if o:
        cmd += ["-o", o]
    cmd += list(extra_args) + [source, str(mnt)]
    started_ns = time.time_ns()
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, env=env)
    except BaseException:
        if unpublish is not None:
            unpublish()
        raise
    d = Daemon(bundle, mnt, proc, log_path, source, unpublish)
    d.started_ns = started_ns
    with _LIVE_LOCK:
        _LIVE.add(d)
    return d


@contextlib.contextmanager
def mount(bundle, options=None, mnt=None, extra_args=(), expect_clean_exit=True,
          persistent=False):
    """Mount bundle with `apbundlefs -f -o OPTIONS`; yield the Daemon.

    options: dict, e.g. {"max_memory": "8M", "chunk_size": "64K",
    "eviction": "lru", "kernel_cache": True}.
    On a normal exit of the with-block the daemon must stop cleanly on SIGTERM
    (exit status 0, mount gone) unless expect_clean_exit is False.
    """
    if mnt is None:
        mnt = tempfile.mkdtemp(prefix="mnt-", dir=str(_BASE or tempfile.gettempdir()))
    mnt = Path(mnt)
    mnt.mkdir(parents=True, exist_ok=True)
    d = start_daemon(bundle, mnt, options, extra_args)
    d.persistent = persistent
    body_failed = False
    try:
        try:
            wait_until(lambda: is_mounted(mnt) or d.proc.poll() is not None,
                       MOUNT_TIMEOUT_S, what="mount of %s" % mnt)
        except TimeoutError:
            pytest.fail("apbundlefs did not mount within %.0fs\ndaemon log:\n%s"
                        % (MOUNT_TIMEOUT_S, d.log()))
        if not is_mounted(mnt):
            pytest.fail("apbundlefs exited with status %s before mounting\ndaemon log:\n%s"
                        % (d.proc.returncode, d.log()))
        d.mounted_ns = time.time_ns()
        try:
            yield d
        except BaseException:
            body_failed = True
            raise
    finally:
        d.stop()
    if expect_clean_exit and not body_failed:
        assert not d.killed, d.stop_note + "\ndaemon log:\n" + d.log()
        assert not is_mounted(mnt), "mount still present after the daemon stopped"
        assert d.proc.returncode == 0, (
            "apbundlefs exited with status %s on SIGTERM (expected 0)\ndaemon log:\n%s"
            % (d.proc.returncode, d.log()))
        assert d.stop_note == "", d.stop_note


def run_daemon_expect_failure(bundle, mnt, options=None, timeout=15, foreground=True):
    """Start the daemon on a bundle that must be refused. Returns
    (returncode, stderr text, mounted_at_some_point). Always cleans up."""
    d = start_daemon(bundle, mnt, options, foreground=foreground)
    mounted = False
    try:
        try:
            d.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        mounted = is_mounted(mnt)
        rc = d.proc.poll()
        return rc, d.log(), mounted
    finally:
        d.stop()


# --------------------------------------------------------------------------
# stopping the daemon under readers

# What a read may fail with when the daemon exits under it (ECONNABORTED:
# the kernel fails the requests of a connection being torn down).
MOUNT_GONE_ERRNOS = {errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, errno.ENODEV,
                     errno.EINTR}


class LoopReader(threading.Thread):
    """O_DIRECT preads of `size` bytes of path from `off` on, each checked
    against data, moving `step` bytes on (wrapping at the end), until
    halt is set or a read fails. Afterwards: reads, bad (offsets of wrong
    bytes), errno (of the failed open or read; 0 if none)."""

    def __init__(self, path, data, size, step=None, off=0):
        super().__init__(daemon=True)
        self.path, self.data, self.size, self.off = path, data, size, off
        self.step = size if step is None else step
        self.halt = threading.Event()
        self.reads, self.bad, self.errno = 0, [], 0

    def run(self):
        try:
            fd = open_direct(self.path)
        except OSError as e:
            self.errno = e.errno
            return
        try:
            while not self.halt.is_set():
                try:
                    got = os.pread(fd, self.size, self.off)
                except OSError as e:
                    self.errno = e.errno
                    return
                if got != self.data[self.off:self.off + self.size]:
                    self.bad.append(self.off)
                self.reads += 1
                self.off = (self.off + self.step) % len(self.data)
        finally:
            with contextlib.suppress(OSError):     # its flush may find no daemon
                os.close(fd)


def stop_under_readers(d, sig, readers, held=()):
    """Send sig to the daemon d (mounted with expect_clean_exit=False) while
    the started readers read, then stop them, close the held files and check
    a clean stop: exit status 0, the mount gone, every reader ended, no
    wrong bytes, reads failed only as a mount that goes away fails them."""
    os.kill(d.pid, sig)
    try:
        rc = d.proc.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail("daemon still running 15s after %s:\n%s" % (sig.name, d.log()))
    finally:
        for r in readers:
            r.halt.set()
        for r in readers:
            r.join(30)
        for f in held:
            with contextlib.suppress(OSError):     # its flush may find no daemon
                f.close()
    assert rc == 0, "exit status %d after %s:\n%s" % (rc, sig.name, d.log())
    wait_until(lambda: not is_mounted(d.mnt), 5, what="mount to disappear")
    assert not any(r.is_alive() for r in readers), "a reader is stuck after the daemon exited"
    assert [r.bad for r in readers if r.bad] == [], "wrong bytes served"
    errors = {r.errno for r in readers if r.errno}
    assert errors <= MOUNT_GONE_ERRNOS, errors


# --------------------------------------------------------------------------
# fixtures

def pytest_configure(config):
    if SOURCE not in SOURCES:
        raise pytest.UsageError("APB_E2E_SOURCE=%s: expected one of %s"
                                % (SOURCE, ", ".join(SOURCES)))
    config.addinivalue_line("markers", "timeout_s(seconds): per-test watchdog limit")
    config.addinivalue_line(
        "markers", "local_only(reason): needs the mounted bundle to be a local file (changed "
        "under the mount, its page cache, state or trace files naming it); skipped when "
        "APB_E2E_SOURCE mounts bundles from a server")
    config.addinivalue_line(
        "markers", "perf: measures the daemon's RSS or a timing-dependent hit rate, which "
        "sanitizer builds change (shadow memory, quarantine, 2-15x slower threads); "
        "scripts/test.sh deselects it there (-m 'not perf')")


def pytest_collection_modifyitems(config, items):
    if SOURCE == "local":
        return
    for item in items:
        m = item.get_closest_marker("local_only")
        if m is not None:
            item.add_marker(pytest.mark.skip(reason="APB_E2E_SOURCE=%s: needs a local bundle "
                                             "file: %s" % (SOURCE, m.args[0] if m.args else "")))


@pytest.fixture(scope="session", autouse=True)
def _session_guard(tmp_path_factory):
    """Session-wide: remember the temp root; at the end make sure no daemon or
    mount started by this session survives (clean up and fail if one does)."""
    global _BASE
    _BASE = tmp_path_factory.getbasetemp()
    yield _BASE
    problems = []
    with _LIVE_LOCK:
        live = list(_LIVE)
    for d in live:
        problems.append("daemon pid %d for %s still registered" % (d.pid, d.mnt))
        d.stop()
    try:
        import psutil
        for p in psutil.process_iter(["name", "cmdline"]):
            cmd = p.info.get("cmdline") or []
            if p.info.get("name") == "apbundlefs" and any(str(_BASE) in c for c in cmd):
                problems.append("apbundlefs pid %d still running: %s" % (p.pid, " ".join(cmd)))
                with contextlib.suppress(Exception):
                    p.kill()
    except ImportError:
        problems.append("python3-psutil is not installed")
    for m in fuse_mounts():
        if _under(m, _BASE):
            problems.append("fuse mount left behind: %s" % m)
            if fusermount_u(m) != 0:
                fusermount_u(m, lazy=True)
    assert not problems, "leaked resources at end of session:\n" + "\n".join(problems)


@pytest.fixture(scope="session", autouse=True)
def _remote_source(request, _session_guard):
    """With APB_E2E_SOURCE=nginx|rgw, the session's server that start_daemon
    publishes bundles to (started once, by its fixture in remote.py)."""
    global _SERVER
    if SOURCE == "local":
        yield None
        return
    _SERVER = request.getfixturevalue("%s_server" % SOURCE)
    try:
        yield _SERVER
    finally:
        _SERVER = None


@pytest.fixture(autouse=True)
def _per_test_guard(request):
    """Watchdog and leak check around every test."""
    marker = request.node.get_closest_marker("timeout_s")
    limit = marker.args[0] if marker else TEST_TIMEOUT_S
    fired = threading.Event()

    def fire():
        fired.set()
        with _LIVE_LOCK:
            live = list(_LIVE)
        for d in live:
            with contextlib.suppress(Exception):
                d.proc.kill()

    timer = threading.Timer(limit, fire)
    timer.daemon = True
    before = {m for m in fuse_mounts() if _under(m, _BASE)}
    timer.start()
    yield
    timer.cancel()
    with _LIVE_LOCK:
        live = [d for d in _LIVE if not d.persistent]
    for d in live:
        d.stop()
    leaked = [m for m in fuse_mounts() if _under(m, _BASE) and m not in before]
    for m in leaked:
        if fusermount_u(m) != 0:
            fusermount_u(m, lazy=True)
    assert not fired.is_set(), "test exceeded its %.0fs watchdog; daemons were killed" % limit
    assert not live, "test left %d daemon(s) running: %s" % (
        len(live), ", ".join(str(d.mnt) for d in live))
    assert not leaked, "test left fuse mounts behind: %s" % leaked


@pytest.fixture(scope="session")
def binaries():
    """The two programs under test; a missing one is a failure, not a skip."""
    for b in (APBUNDLEFS, APBUNDLE):
        if not (b.is_file() and os.access(b, os.X_OK)):
            pytest.fail("%s is not built (run: meson setup build && ninja -C build)" % b)
    return APBUNDLEFS, APBUNDLE


@pytest.fixture
def mount_bundle(binaries):
    """The mount context manager as a fixture: `with mount_bundle(b, opts) as d:`."""
    return mount


@pytest.fixture
def bundle_dir(tmp_path):
    d = tmp_path / "bundles"
    d.mkdir()
    return d
