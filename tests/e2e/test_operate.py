"""Operating apbundlefs as a system tool (docs/USAGE.md, "Mounting at boot"):
-o ro, the lines logged at mount and unmount (stderr in the foreground,
syslog in the background, caught on a /dev/log socket of a private mount
namespace), an fstab mount through mount(8) and mount.fuse3 (in a private
mount namespace, with apbundlefs on mount's PATH there only), and the
systemd template unit: `systemd-analyze verify`, and its ExecStart run as
systemd would run it (this machine's PID 1 need not be systemd).
"""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request

import pytest

import apbformat
from conftest import (APBUNDLEFS, BUILD, KiB, MiB, is_mounted, mount, read_all,
                      wait_until)

A = apbformat.random_bytes(5 * 64 * KiB + 3, 41)
B = apbformat.random_bytes(1000, 42)
MODELS = [("a.bin", A), ("d/b.bin", B)]
OPTS = {"max_memory": "8M", "eviction": "lru", "prefetch": "off", "prefetch_count": "0"}


@pytest.fixture
def bundle(tmp_path):
    return apbformat.write_v1(tmp_path / "b.apbundle", MODELS)


def mount_line(mnt):
    with open("/proc/self/mounts") as f:
        return next(x.split() for x in f if x.split()[1] == str(mnt))


# -- -o ro -------------------------------------------------------------------

def test_ro_keeps_control_usable(bundle):
    """-o ro: the models read right and refuse writes (EROFS, as without
    ro), and .control still takes commands: ro is not passed to the kernel,
    whose read-only mount would refuse the write to .control."""
    with mount(bundle, dict(OPTS, ro=True)) as d:
        assert read_all(d.path("a.bin")) == A
        assert read_all(d.path("d/b.bin")) == B
        with pytest.raises(OSError) as ei:
            os.open(str(d.path("a.bin")), os.O_WRONLY)
        assert ei.value.errno == errno.EROFS
        assert d.stats()["models"]["a.bin"]["resident_bytes"] == len(A)
        d.control("evict a.bin")
        assert d.stats()["models"]["a.bin"]["resident_bytes"] == 0
        assert mount_line(d.mnt)[3].split(",")[0] == "rw"


# -- log lines ---------------------------------------------------------------

def test_mount_and_unmount_are_logged(bundle, tmp_path):
    """In the foreground, on stderr: one line when the mount is up (bundle,
    mountpoint, budget, policy), one when it goes (why)."""
    with mount(bundle, dict(OPTS, chunk_size="128K")) as d:
        assert read_all(d.path("d/b.bin")) == B
    lines = d.log_all().splitlines()
    assert lines == [
        "apbundlefs: mounted %s on %s: max_memory=8.0 MiB chunk_size=128.0 KiB "
        "eviction=lru prefetch=off" % (d.source, d.mnt),
        "apbundlefs: unmounted %s from %s: on signal %d (%s)" % (
            d.source, d.mnt, signal.SIGTERM, signal.strsignal(signal.SIGTERM)),
    ], lines


def test_unmount_from_outside_is_logged(bundle):
    with mount(bundle, OPTS) as d:
        assert subprocess.run(["fusermount3", "-u", str(d.mnt)]).returncode == 0
        d.proc.wait(10)
    assert d.log_all().splitlines()[-1] == \
        "apbundlefs: unmounted %s from %s: unmounted from outside" % (d.source, d.mnt)


# A script for a private mount namespace: /dev is a new tmpfs there holding
# fuse, null and a datagram socket at /dev/log; it mounts in the background
# (no -f, so the daemon logs to syslog), reads, unmounts, and prints the
# syslog records received as JSON. Every daemon it started is gone when it
# returns (the namespace ends with it, but a live daemon would keep it).
SYSLOG_SCRIPT = r"""
import json, os, socket, subprocess, sys, time
binary, bundle, mnt, model = sys.argv[1:5]
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", "/dev"], check=True)
os.mknod("/dev/fuse", 0o20666, os.makedev(10, 229))
os.mknod("/dev/null", 0o20666, os.makedev(1, 3))
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/dev/log")
s.settimeout(10)
records, pid = [], None
try:
    r = subprocess.run([binary, "-o", "max_memory=8M,eviction=lfu", bundle, mnt],
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r
    records.append(s.recv(4096).decode())
    pid = int(records[0].split("apbundlefs[")[1].split("]")[0])
    with open(os.path.join(mnt, model), "rb") as f:
        f.read()
    assert subprocess.run(["umount", mnt]).returncode == 0
    records.append(s.recv(4096).decode())
    deadline = time.monotonic() + 10
    while os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists("/proc/%d" % pid), "daemon still running"
finally:
    if pid and os.path.exists("/proc/%d" % pid):
        os.kill(pid, 9)
    subprocess.run(["umount", "-l", mnt], stderr=subprocess.DEVNULL)
print(json.dumps({"records": records, "pid": pid}))
"""


def can_unshare():
    return shutil.which("unshare") and subprocess.run(
        ["unshare", "-m", "true"], capture_output=True).returncode == 0


needs_ns = pytest.mark.skipif(os.geteuid() != 0 or not can_unshare(),
                              reason="needs root and mount namespaces (unshare -m)")


@needs_ns
@pytest.mark.local_only("mounts the bundle file itself, in a namespace")
def test_background_logs_to_syslog_without_doubled_prefix(bundle, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                        SYSLOG_SCRIPT, str(APBUNDLEFS), str(bundle), str(mnt), "a.bin"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    tag = "apbundlefs[%d]: " % out["pid"]
    # daemon facility (3), info (6): <30>; the tag once; no newline
    want = ["mounted %s on %s: max_memory=8.0 MiB chunk_size=64.0 KiB eviction=lfu "
            "prefetch=on" % (bundle, mnt),
            "unmounted %s from %s: unmounted from outside" % (bundle, mnt)]
    for rec, text in zip(out["records"], want):
        assert rec.startswith("<30>"), rec
        assert rec.endswith(tag + text), rec
        assert "\n" not in rec and rec.count("apbundlefs") == 1 + text.count("apbundlefs"), rec
    assert len(out["records"]) == 2


# -- fstab and mount(8) ------------------------------------------------------

# For a private mount namespace: mount(8) runs helpers with PATH
# /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin, and
# mount.fuse3 runs `apbundlefs` from it; a tmpfs over /usr/local/sbin
# holding a link to the built binary puts it there for this namespace only.
# Then it mounts each line of the fstab given, checks the files and a
# .control command, unmounts and waits for the daemon to go.
FSTAB_SCRIPT = r"""
import hashlib, json, os, subprocess, sys, time
binary, fstab, mnt, how = sys.argv[1:5]
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/usr/local/sbin"], check=True)
os.symlink(binary, "/usr/local/sbin/apbundlefs")
def daemons():
    out = []
    for p in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % p, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if p.isdigit() and argv[0].endswith(b"apbundlefs") and mnt.encode() in argv:
            out.append(int(p))
    return out
res = {}
try:
    if how == "mount -a":
        cmd = ["mount", "-a", "-T", fstab]
    elif how == "mount MOUNTPOINT":
        cmd = ["mount", "-T", fstab, mnt]
    else:
        line = [l for l in open(fstab) if not l.startswith("#")][0].split()
        cmd = ["mount", "-t", line[2], "-o", line[3], line[0], line[1]]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    res["mount"] = [r.returncode, r.stderr]
    with open("/proc/self/mounts") as f:
        res["mounts"] = [l.split() for l in f if l.split()[1] == mnt]
    res["sha"] = {}
    for name in ("a.bin", "d/b.bin"):
        with open(os.path.join(mnt, name), "rb") as f:
            res["sha"][name] = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(mnt, ".control"), "w") as f:
        f.write("evict a.bin\n")
    with open(os.path.join(mnt, ".stats")) as f:
        res["stats"] = json.load(f)
    res["pids"] = daemons()
    res["umount"] = subprocess.run(["umount", mnt]).returncode
    deadline = time.monotonic() + 10
    while daemons() and time.monotonic() < deadline:
        time.sleep(0.01)
    res["left"] = daemons()
finally:
    for p in daemons():
        os.kill(p, 9)
    subprocess.run(["umount", "-l", mnt], stderr=subprocess.DEVNULL)
print(json.dumps(res))
"""


@needs_ns
@pytest.mark.local_only("mounts the bundle file itself, in a namespace")
@pytest.mark.skipif(shutil.which("mount.fuse3") is None, reason="no mount.fuse3 (fuse3)")
@pytest.mark.parametrize("how", ["mount -a", "mount MOUNTPOINT", "mount -t fuse.apbundlefs"])
def test_fstab_mount(bundle, tmp_path, how):
    """The docs' fstab line: ro (the .control write still works),
    allow_other, apbundlefs options; mounted by `mount -a`, by mountpoint,
    and by `mount -t fuse.apbundlefs`; `umount` stops the daemon."""
    import hashlib
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text("# test fstab\n%s %s fuse.apbundlefs ro,allow_other,max_memory=8M,"
                     "eviction=lfu,prefetch=off 0 0\n" % (bundle, mnt))
    r = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                        FSTAB_SCRIPT, str(APBUNDLEFS), str(fstab), str(mnt), how],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["mount"] == [0, ""], res
    assert len(res["mounts"]) == 1
    src, where, kind, opts = res["mounts"][0][:4]
    assert (src, where, kind) == (str(bundle), str(mnt), "fuse.apbundlefs")
    assert "allow_other" in opts.split(",") and "default_permissions" in opts.split(",")
    assert res["sha"] == {n: hashlib.sha256(d).hexdigest() for n, d in MODELS}
    st = res["stats"]
    assert st["cache"]["memory_limit"] == 8 * MiB and st["cache"]["policy"] == "lfu"
    assert st["models"]["a.bin"]["resident_bytes"] == 0      # the evict took
    assert st["mount"]["mountpoint"] == str(mnt)
    assert len(res["pids"]) == 1 and res["umount"] == 0 and res["left"] == [], res
    assert not is_mounted(mnt)


# -- the systemd unit ----------------------------------------------------------

UNIT = BUILD / "apbundlefs@.service"


def unit_for_build(tmp_path):
    """The built unit with ExecStart naming the built binary."""
    text = UNIT.read_text()
    m = re.search(r"^ExecStart=(\S+)/apbundlefs ", text, re.M)
    assert m, text
    d = tmp_path / "units"
    d.mkdir(exist_ok=True)
    p = d / "apbundlefs@test.service"
    p.write_text(text.replace(m.group(1) + "/apbundlefs", str(APBUNDLEFS)))
    return p


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_verifies(tmp_path):
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit_for_build(tmp_path))],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r


def service_lines(unit):
    sec, out = None, {}
    for line in unit.read_text().splitlines():
        if line.startswith("["):
            sec = line
        elif sec == "[Service]" and "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def exec_start(unit, conf):
    """ExecStart as systemd runs it: Environment= then the EnvironmentFile,
    ${VAR} one word each, even empty."""
    svc = service_lines(unit)
    env = {}
    for e in svc["Environment"]:
        k, v = e.split("=", 1)
        env[k] = v
    assert svc["EnvironmentFile"] == ["/etc/apbundlefs/%i.conf"]
    for line in conf.read_text().splitlines():
        if line and not line.startswith("#"):
            k, v = line.split("=", 1)
            env[k] = v
    (cmd,) = svc["ExecStart"]
    return [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], w) for w in cmd.split()]


@pytest.mark.local_only("runs the unit on the bundle file")
@pytest.mark.parametrize("options", ["", "max_memory=8M,eviction=lfu,ro",
                                     "max_memory=8M,metrics_listen=127.0.0.1:0"])
def test_unit_exec_start(bundle, tmp_path, options):
    """Type=forking: ExecStart returns 0 with the mount there; SIGTERM to
    the daemon (what systemctl stop sends) unmounts it, and it exits. The
    HTTP endpoint serves from the daemon that fuse_daemonize() forked."""
    unit = unit_for_build(tmp_path)
    assert service_lines(unit)["Type"] == ["forking"]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    conf = tmp_path / "test.conf"
    conf.write_text("BUNDLE=%s\nMOUNTPOINT=%s\nOPTIONS=%s\n" % (bundle, mnt, options))
    cmd = exec_start(unit, conf)
    assert cmd[0] == str(APBUNDLEFS)
    pid = None
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r
        assert is_mounted(mnt)
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and
                _argv(p)[-1:] == [str(mnt)] and _argv(p)[0] == str(APBUNDLEFS)]
        assert len(pids) == 1
        pid = pids[0]
        assert read_all(mnt / "a.bin") == A
        d_stats = json.loads((mnt / ".stats").read_text())
        assert d_stats["cache"]["memory_limit"] == (8 * MiB if options else 256 * MiB)
        if "metrics_listen" in options:
            url = "http://%s/metrics" % d_stats["mount"]["metrics_listen"]
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = resp.read().decode()
            assert body.startswith("# HELP apbundlefs_build_info ")
            assert 'mountpoint="%s"' % mnt in body
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not os.path.exists("/proc/%d" % pid), 10, what="daemon exit")
        pid = None
        assert not is_mounted(mnt)
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)])


def _argv(pid):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return [""]
