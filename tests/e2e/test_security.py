"""Who may do what on a mount, and what a bundle or a path cannot make the
daemon do.

Names a bundle cannot carry are refused at mount in test_malformed.py (every
rule, both layouts) and at create in test_cli.py; here names that are valid
however odd they look.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import apbformat
from conftest import is_mounted, mount, mount_options, run_daemon_expect_failure

NOBODY = 65534
DATA = apbformat.random_bytes(200 * 1024 + 7, 91)


@pytest.fixture
def open_dir():
    """A directory every user may traverse (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="apbfs-sec-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def as_nobody(code, *args):
    """Run python code as uid/gid 65534; return what it prints as JSON."""
    def drop():
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    p = subprocess.run([sys.executable, "-c", code] + [str(a) for a in args],
                       preexec_fn=drop, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=30, cwd="/")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


NOBODY_TRIES = r"""
import hashlib, json, os, sys
mnt = sys.argv[1]
out = {}
def attempt(key, fn):
    try:
        out[key] = fn()
    except OSError as e:
        out[key] = -e.errno
def read(name):
    with open(os.path.join(mnt, name), "rb") as f:
        return f.read()
attempt("model", lambda: hashlib.sha256(read("d/m.bin")).hexdigest())
attempt("stats", lambda: sorted(json.loads(read(".stats"))))
attempt("listdir", lambda: sorted(os.listdir(mnt)))
attempt("write_control", lambda: os.open(os.path.join(mnt, ".control"), os.O_WRONLY))
attempt("access_control", lambda: os.access(os.path.join(mnt, ".control"), os.W_OK))
attempt("write_model", lambda: os.open(os.path.join(mnt, "d/m.bin"), os.O_WRONLY))
attempt("create", lambda: os.open(os.path.join(mnt, "new"), os.O_WRONLY | os.O_CREAT, 0o644))
print(json.dumps(out))
"""


def test_allow_other_control_is_the_mounting_users(open_dir, binaries):
    import hashlib
    bundle = apbformat.write_v1(open_dir / "b.apbundle", [("d/m.bin", DATA)])
    mnt = open_dir / "mnt"
    with mount(bundle, {"max_memory": "1M", "allow_other": True}, mnt=mnt) as d:
        opts = mount_options(mnt)
        assert "allow_other" in opts and "default_permissions" in opts, opts
        got = as_nobody(NOBODY_TRIES, mnt)
        assert got["model"] == hashlib.sha256(DATA).hexdigest()
        assert got["stats"] == ["cache", "io", "models", "mount", "prefetch"]
        assert got["listdir"] == [".control", ".metrics", ".stats", "d"]
        assert got["write_control"] == -errno.EACCES
        assert got["access_control"] is False
        # the kernel answers from the mode bits; the daemon would say EROFS
        assert got["write_model"] == -errno.EACCES
        assert got["create"] == -errno.EACCES
        s = d.stats()
        assert s["models"]["d/m.bin"]["opens"] == 1, "nobody's read was not served by the daemon"
        assert s["io"]["errors"] == 0
        d.control("reset-stats")                       # the owner still may
        assert d.stats()["models"]["d/m.bin"]["opens"] == 0


def test_without_allow_other_others_get_nothing(open_dir, binaries):
    bundle = apbformat.write_v1(open_dir / "b.apbundle", [("d/m.bin", DATA)])
    mnt = open_dir / "mnt"
    with mount(bundle, {"max_memory": "1M"}, mnt=mnt):
        opts = mount_options(mnt)
        assert "user_id=%d" % os.getuid() in opts, opts       # the mount was found
        assert "allow_other" not in opts and "default_permissions" not in opts, opts
        got = as_nobody(NOBODY_TRIES, mnt)
        assert got["model"] == -errno.EACCES
        assert got["stats"] == -errno.EACCES
        assert got["write_control"] == -errno.EACCES


# ------------------------------------------------ the daemon's own mount

def inside_bundle(tmp_path, mnt):
    return apbformat.write_v1(mnt / "b.apbundle", [("m.bin", DATA)]), {}, "b.apbundle"


def symlink_to_inside(tmp_path, mnt):
    (mnt / "sub").mkdir()
    real = apbformat.write_v1(mnt / "sub" / "b.apbundle", [("m.bin", DATA)])
    link = tmp_path / "link.apbundle"
    link.symlink_to(real)
    return link, {}, "link.apbundle"


def state_inside(tmp_path, mnt):
    b = apbformat.write_v1(tmp_path / "b.apbundle", [("m.bin", DATA)])
    return b, {"state": mnt / "state.json"}, "state=%s" % (mnt / "state.json")


@pytest.mark.parametrize("case", [inside_bundle, symlink_to_inside, state_inside])
def test_files_inside_the_mountpoint_are_refused(tmp_path, binaries, case):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    bundle, opts, what = case(tmp_path, mnt)
    rc, log, mounted = run_daemon_expect_failure(bundle, mnt, dict(opts, max_memory="1M"))
    assert not mounted and not is_mounted(mnt)
    assert rc is not None and rc > 0, "exit status %r:\n%s" % (rc, log)
    assert log.startswith("apbundlefs: ") and what in log, log
    assert "lies inside the mountpoint %s" % mnt in log, log


# ------------------------------------------------------------- names

ODD_BUT_VALID = ["..a", "a..", "...", ".statsx", "sub/.stats", "sub/.control", "sub/..b",
                 " lead space", "ü/名.bin", "-rf"]


def test_odd_names_stay_inside_the_mount(tmp_path, binaries):
    models = [(n, DATA[i:i + 1000 + i]) for i, n in enumerate(ODD_BUT_VALID)]
    bundle = apbformat.write_v1(tmp_path / "o.apbundle", models)
    with mount(bundle, {"max_memory": "1M"}) as d:
        root = os.path.realpath(d.mnt)
        seen = set()
        for dirpath, _, files in os.walk(d.mnt):
            for f in files:
                p = os.path.join(dirpath, f)
                assert os.path.realpath(p).startswith(root + "/")
                seen.add(os.path.relpath(p, d.mnt))
        assert seen == set(ODD_BUT_VALID) | {".stats", ".metrics", ".control"}
        for name, data in models:
            with open(d.path(name), "rb") as f:
                assert f.read() == data, name
        assert os.stat(d.path("sub/.control")).st_mode & 0o777 == 0o444  # a model, not the control file
        assert os.path.samefile(d.path("sub/.."), d.mnt)
