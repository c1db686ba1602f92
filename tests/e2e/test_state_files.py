"""The files that state= and trace= name: where they may lie, what they may
be, and where they are when the daemon runs in the background.

A daemon that opened a file inside its own mount before serving would wait
for itself forever (`ls MNT` hangs, SIGTERM does nothing); so would a FIFO
without a writer. The checks here run the daemon with a timeout, look at
the mount only through /proc/self/mountinfo (which never blocks), and if a
daemon did mount and hang, abort its FUSE connection, so that a regression
fails these tests instead of hanging the suite.
"""

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import uuid

import psutil
import pytest

import apbformat
from conftest import APBUNDLEFS, SOURCE, KiB, fusermount_u, is_mounted, mount, start_daemon

A = apbformat.random_bytes(64 * KiB, 81)
B = apbformat.random_bytes(64 * KiB, 82)
MODELS = [("a.bin", A), ("b.bin", B)]
REFUSE_TIMEOUT_S = 10.0
STATE = {"version": 1, "models": {"a.bin": {"opens": 5, "next": {"b.bin": 2}}}}


@pytest.fixture
def bundle(tmp_path):
    return apbformat.write_v1(tmp_path / "s.apbundle", MODELS)


@pytest.fixture
def mnt(tmp_path):
    m = tmp_path / "mnt"
    m.mkdir()
    return m


def _fuse_connection(mnt):
    """The FUSE connection number of the mount at mnt (its device minor),
    or None. From /proc/self/mountinfo alone: even a realpath() of mnt
    would wait on a daemon that never answers (pytest's tmp_path is real
    already)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ")
            if fields[4] == str(mnt):
                return int(fields[2].split(":")[1])
    return None


def _abort_connection(mnt):
    """Abort the FUSE connection of mnt through a private mount of fusectl:
    every request waiting on it fails, so a daemon blocked on its own mount
    can be stopped."""
    conn = _fuse_connection(mnt)
    if conn is None:
        return
    ctl = tempfile.mkdtemp(prefix="fusectl-")
    try:
        subprocess.run(["mount", "-t", "fusectl", "fusectl", ctl], check=True, timeout=10)
        try:
            with open(os.path.join(ctl, str(conn), "abort"), "w") as f:
                f.write("1")
        finally:
            subprocess.run(["umount", ctl], timeout=10)
    finally:
        os.rmdir(ctl)


def refused(bundle, mnt, options):
    """Start `apbundlefs -f` on options that must be refused before
    mounting. Returns (exit status, log, mounted at the end of the wait).
    A daemon that mounted and still runs after REFUSE_TIMEOUT_S is taken
    for hung on itself: its connection is aborted, then it is stopped."""
    d = start_daemon(bundle, mnt, dict(options, max_memory="1M"))
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            d.proc.wait(REFUSE_TIMEOUT_S)
        mounted = _fuse_connection(mnt) is not None
        if mounted and d.proc.poll() is None:
            _abort_connection(mnt)
        return d.proc.poll(), d.log(), mounted
    finally:
        d.stop()


def assert_refused(bundle, mnt, options, *expected):
    rc, log, mounted = refused(bundle, mnt, options)
    assert not mounted and _fuse_connection(mnt) is None, "mounted:\n" + log
    assert rc == 1, "exit status %r:\n%s" % (rc, log)
    assert log.startswith("apbundlefs: "), log
    for e in expected:
        assert e in log, "%r not in:\n%s" % (e, log)
    return log


# ------------------------------------------------ inside the mount, FIFOs

@pytest.mark.parametrize("depth", ["nonexist/s.json", "a/b/c/s.json"])
def test_state_below_a_missing_directory_of_the_mount_is_refused(bundle, mnt, depth):
    """D2: the parent does not exist either, so the path resolves to nothing;
    its deepest existing ancestor, the mountpoint, is what counts."""
    state = mnt / depth
    assert_refused(bundle, mnt, {"state": state},
                   "state=%s: lies inside the mountpoint %s" % (state, mnt))


def test_trace_below_a_missing_directory_of_the_mount_is_refused(bundle, mnt):
    trace = mnt / "nonexist" / "t.trace"
    assert_refused(bundle, mnt, {"trace": trace},
                   "trace=%s: lies inside the mountpoint %s" % (trace, mnt))


def test_state_through_a_symlink_into_the_mount_is_refused(bundle, mnt, tmp_path):
    link = tmp_path / "into-mnt"
    link.symlink_to(mnt)
    state = link / "nonexist" / "s.json"
    assert_refused(bundle, mnt, {"state": state}, "state=%s: lies inside the mountpoint" % state)


def test_a_state_fifo_is_refused_without_blocking(bundle, mnt, tmp_path):
    """D2: opening a FIFO with no writer blocks; the state file is opened
    so that it never can, and anything but a regular file is refused."""
    fifo = tmp_path / "state.fifo"
    os.mkfifo(fifo)
    assert_refused(bundle, mnt, {"state": fifo},
                   "state=%s: is a FIFO, not a regular file; it would be overwritten" % fifo)
    assert fifo.is_fifo()


def test_a_state_directory_is_refused(bundle, mnt, tmp_path):
    d = tmp_path / "state.d"
    d.mkdir()
    assert_refused(bundle, mnt, {"state": d},
                   "state=%s: is a directory, not a regular file" % d)


def test_state_in_a_missing_directory_is_refused(bundle, mnt, tmp_path):
    """Its counts could never be saved at unmount."""
    state = tmp_path / "nodir" / "s.json"
    assert_refused(bundle, mnt, {"state": state},
                   "state=%s: its directory does not exist" % state)


# ------------------------------------------------ files that are not state files

def test_a_text_file_as_state_is_refused_and_kept(bundle, mnt, tmp_path):
    """D6: a file that is not a state file would be overwritten at unmount."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    assert_refused(bundle, mnt, {"state": notes},
                   "state=%s: not an apbundlefs state file" % notes,
                   "it would be overwritten at unmount")
    assert notes.read_text() == "my notes\n"


def test_a_corrupt_state_file_is_refused_and_kept(bundle, mnt, tmp_path):
    state = tmp_path / "state.json"
    text = '{"version": 1, "models": {"a.bin": {"opens": -5}}'
    state.write_text(text)
    assert_refused(bundle, mnt, {"state": state},
                   "state=%s: not an apbundlefs state file: not JSON" % state)
    assert state.read_text() == text


def test_a_state_file_of_another_version_is_refused_and_kept(bundle, mnt, tmp_path):
    state = tmp_path / "state.json"
    text = json.dumps({"version": 2, "models": {}})
    state.write_text(text)
    assert_refused(bundle, mnt, {"state": state},
                   "not an apbundlefs state file: 'version' is not 1")
    assert state.read_text() == text


def test_the_bundle_as_state_is_refused_and_kept(bundle, mnt, tmp_path):
    """From a local file the daemon sees that state= names the bundle; by URL
    (APB_E2E_SOURCE) the same file, the one the server publishes, is not
    the mounted bundle to it and is refused as no state file: kept either way."""
    before = bundle.read_bytes()
    link = tmp_path / "link.json"
    link.symlink_to(bundle)
    for state in (bundle, link):
        why = ("is the bundle being mounted" if SOURCE == "local" else
               "not an apbundlefs state file: not JSON")
        assert_refused(bundle, mnt, {"state": state}, "state=%s: %s" % (state, why))
    assert bundle.read_bytes() == before


def test_state_and_trace_naming_one_file_are_refused(bundle, mnt, tmp_path):
    """trace= empties its file at mount: with state= naming it too, the
    counts would be gone before they were read."""
    state = tmp_path / "state.json"
    text = json.dumps(STATE)
    state.write_text(text)
    hard = tmp_path / "hard.json"
    os.link(state, hard)
    for trace in (state, hard, "%s/./state.json" % tmp_path):
        assert_refused(bundle, mnt, {"state": state, "trace": trace},
                       "trace=%s: is the file of state=%s" % (trace, state))
    assert state.read_text() == text
    # Neither exists yet: one place all the same.
    new = tmp_path / "new.json"
    (tmp_path / "sub").mkdir()
    assert_refused(bundle, mnt, {"state": new, "trace": "%s/sub/../new.json" % tmp_path},
                   "is the file of state=%s" % new)
    assert not new.exists()


def test_an_empty_state_file_counts_as_new(bundle, tmp_path):
    state = tmp_path / "state.json"
    state.touch()
    with mount(bundle, {"max_memory": "1M", "state": state}) as d:
        assert d.path("a.bin").read_bytes() == A
    # The learned load order of a.bin: its one chunk (test_load_order.py).
    order = {"chunk_size": 65536, "size": len(A), "runs": [[0, 1]]}
    assert json.loads(state.read_text())["models"] == {
        "a.bin": {"opens": 1, "next": {}, "order": order}}


def test_a_refused_mount_leaves_a_good_state_file_alone(bundle, mnt, tmp_path):
    """A refused mount (here: an unknown option, named before the bundle
    or the state file is read) does not write the state file back."""
    state = tmp_path / "state.json"
    text = json.dumps(STATE, indent=1) + "\n"
    state.write_text(text)
    rc, log, mounted = refused(bundle, mnt, {"state": state, "no_such_option": True})
    assert (rc, mounted) == (2, False), log
    assert "unknown option 'no_such_option' (see apbundlefs --help)\n" in log, log
    assert state.read_text() == text


# ------------------------------------------------ relative paths in the background

def _daemon_of(mnt):
    procs = [q for q in psutil.process_iter(["name", "cmdline"])
             if q.info["name"] == "apbundlefs" and str(mnt) in (q.info["cmdline"] or [])]
    assert len(procs) == 1, procs
    return procs[0]


def test_relative_paths_in_the_background(bundle, mnt, tmp_path):
    """D5: fuse_daemonize() moves the daemon to /; a relative state= was
    neither read at mount nor written where it was named, but to /."""
    name = "apbfs-state-%s.json" % uuid.uuid4().hex
    (tmp_path / name).write_text(json.dumps(STATE))
    p = subprocess.run([str(APBUNDLEFS), "-o", "max_memory=1M,state=%s,trace=t.trace" % name,
                        bundle.name, str(mnt)], cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=20)
    daemon = None
    try:
        assert p.returncode == 0, p.stderr
        assert is_mounted(mnt)
        daemon = _daemon_of(mnt)
        with open(mnt / ".stats") as f:
            assert json.load(f)["models"]["a.bin"]["resident_bytes"] == 0
        assert (mnt / "a.bin").read_bytes() == A
    finally:
        if is_mounted(mnt) and fusermount_u(mnt) != 0:
            fusermount_u(mnt, lazy=True)
        if daemon:
            try:
                daemon.wait(10)
            except psutil.TimeoutExpired:
                os.kill(daemon.pid, signal.SIGKILL)
                pytest.fail("background daemon did not exit after fusermount3 -u")
        stray = os.path.join("/", name)
        leaked = os.path.exists(stray)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stray)
    assert not leaked, "the state file was written to %s" % stray
    saved = json.loads((tmp_path / name).read_text())
    assert saved["models"]["a.bin"]["opens"] == 6, saved      # 5 read at mount, 1 open
    assert (tmp_path / "t.trace").stat().st_size > 0
    assert not os.path.exists("/t.trace")
