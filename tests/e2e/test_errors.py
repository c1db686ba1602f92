"""The mount is read-only (EROFS for every change) and unknown names are ENOENT."""

import errno
import os

import pytest

import apbformat
from conftest import mount

MODELS = [("m.bin", apbformat.random_bytes(10000, 1)),
          ("dir/n.bin", apbformat.random_bytes(5000, 2)),
          ("dir/sub/o.bin", apbformat.random_bytes(4096, 3))]


@pytest.fixture(scope="module")
def mnt(tmp_path_factory, binaries):
    bundle = apbformat.write_v1(tmp_path_factory.mktemp("err") / "e.apbundle", MODELS)
    with mount(bundle, {"max_memory": "1M", "chunk_size": "64K"}, persistent=True) as d:
        yield d.mnt


def expect_errno(code, fn, *args):
    with pytest.raises(OSError) as ei:
        r = fn(*args)
        if isinstance(r, int) and fn is os.open:
            os.close(r)
    assert ei.value.errno == code, "%s%r: expected %s, got %s (%s)" % (
        fn.__name__, args, errno.errorcode[code],
        errno.errorcode.get(ei.value.errno, ei.value.errno), ei.value.strerror)


def _open(flags, mode=0o644):
    def f(path):
        fd = os.open(path, flags, mode)
        os.close(fd)
    f.__name__ = "open(%#o)" % flags
    return f


W = os.O_WRONLY
EROFS_CASES = [
    ("open O_WRONLY", lambda m: _open(W)(m / "m.bin")),
    ("open O_RDWR", lambda m: _open(os.O_RDWR)(m / "m.bin")),
    ("open O_WRONLY|O_TRUNC", lambda m: _open(W | os.O_TRUNC)(m / "m.bin")),
    ("open O_WRONLY|O_APPEND", lambda m: _open(W | os.O_APPEND)(m / "dir/n.bin")),
    ("open O_RDWR nested", lambda m: _open(os.O_RDWR)(m / "dir/sub/o.bin")),
    ("create in root", lambda m: _open(W | os.O_CREAT)(m / "new.bin")),
    ("create in subdir", lambda m: _open(W | os.O_CREAT)(m / "dir/new.bin")),
    ("create O_RDWR|O_CREAT", lambda m: _open(os.O_RDWR | os.O_CREAT)(m / "x")),
    ("mknod", lambda m: os.mknod(m / "node", 0o644 | 0o100000)),
    ("unlink", lambda m: os.unlink(m / "m.bin")),
    ("unlink nested", lambda m: os.unlink(m / "dir/sub/o.bin")),
    ("rmdir", lambda m: os.rmdir(m / "dir/sub")),
    ("mkdir", lambda m: os.mkdir(m / "newdir")),
    ("mkdir nested", lambda m: os.mkdir(m / "dir/newdir")),
    ("rename file", lambda m: os.rename(m / "m.bin", m / "m2.bin")),
    ("rename onto existing", lambda m: os.rename(m / "m.bin", m / "dir/n.bin")),
    ("rename dir", lambda m: os.rename(m / "dir", m / "dir2")),
    ("chmod file", lambda m: os.chmod(m / "m.bin", 0o644)),
    ("chmod dir", lambda m: os.chmod(m / "dir", 0o755)),
    ("chown", lambda m: os.chown(m / "m.bin", 1, 1)),
    ("truncate", lambda m: os.truncate(m / "m.bin", 0)),
    ("truncate grow", lambda m: os.truncate(m / "dir/n.bin", 1 << 20)),
    ("utime", lambda m: os.utime(m / "m.bin", (1, 1))),
    ("setxattr", lambda m: os.setxattr(m / "m.bin", "user.test", b"1")),
    ("removexattr", lambda m: os.removexattr(m / "m.bin", "user.test")),
    ("symlink", lambda m: os.symlink("m.bin", m / "link")),
    ("hard link", lambda m: os.link(m / "m.bin", m / "link2")),
    ("write .stats", lambda m: _open(W)(m / ".stats")),
    ("write .metrics", lambda m: _open(W)(m / ".metrics")),
    ("unlink .stats", lambda m: os.unlink(m / ".stats")),
    ("unlink .control", lambda m: os.unlink(m / ".control")),
]


@pytest.mark.parametrize("case", EROFS_CASES, ids=[c[0] for c in EROFS_CASES])
def test_change_fails_with_erofs(mnt, case):
    _, op = case
    with pytest.raises(OSError) as ei:
        op(mnt)
    assert ei.value.errno == errno.EROFS, "%s: expected EROFS, got %s (%s)" % (
        case[0], errno.errorcode.get(ei.value.errno, ei.value.errno), ei.value.strerror)


def test_nothing_changed_after_attempts(mnt):
    for name, data in MODELS:
        with open(mnt / name, "rb") as f:
            assert f.read() == data
    assert set(os.listdir(mnt)) - {".stats", ".metrics", ".control"} == {"m.bin", "dir"}
    assert set(os.listdir(mnt / "dir")) == {"n.bin", "sub"}
    assert os.stat(mnt / "m.bin").st_mode & 0o7777 == 0o444


ENOENT_NAMES = ["nope", "nope.bin", "M.BIN", "m.bin.", "m", "dir/nope", "dir/n", "di",
                "nope/x", "dir/sub/nope", "dir/sub/o.bin2", ".statsx", ".stat"]


@pytest.mark.parametrize("name", ENOENT_NAMES)
def test_unknown_name_is_enoent(mnt, name):
    expect_errno(errno.ENOENT, os.stat, mnt / name)
    expect_errno(errno.ENOENT, os.open, mnt / name, os.O_RDONLY)


@pytest.mark.parametrize("directory", ["nope", "dir/nope"])
def test_listing_unknown_directory_is_enoent(mnt, directory):
    expect_errno(errno.ENOENT, os.listdir, mnt / directory)


@pytest.mark.parametrize("name", ["m.bin/x", "dir/n.bin/y"])
def test_path_through_a_file_is_enotdir(mnt, name):
    expect_errno(errno.ENOTDIR, os.stat, mnt / name)
