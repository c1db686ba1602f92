"""What `apbundle create` and `apbundle extract` do to what is already at
their output path (docs/USAGE.md, "Output files"): a symbolic link, FIFO,
device or socket is refused and left as it was; a regular file is replaced
and keeps its mode and, as far as the caller may, its owner and group.
`extract -o -` writes to standard output instead."""

import os
import pty
import shutil
import socket
import stat
import subprocess
import tempfile

import pytest

import apbformat
from conftest import APBUNDLE, MiB, pack, run_apbundle

MODEL = apbformat.random_bytes(100003, 71)
OTHER_UID = 4321
OTHER_GID = 4322


@pytest.fixture
def bundle(tmp_path):
    (tmp_path / "m.bin").write_bytes(MODEL)
    return pack(tmp_path / "b.apbundle", "dir/m.bin=%s" % (tmp_path / "m.bin"))


def write(cmd, out, tmp_path, *extra):
    """Run create (packing m.bin) or extract (of dir/m.bin) with output out."""
    if cmd == "create":
        return run_apbundle("create", *extra, out, tmp_path / "m.bin")
    return run_apbundle("extract", *extra, tmp_path / "b.apbundle", "dir/m.bin", "-o", out)


def written(cmd, out):
    """The bytes the command wrote are the model (extract) or a bundle (create)."""
    data = open(out, "rb").read()
    if cmd == "extract":
        return data == MODEL
    return data[:8] == b"APBUNDLE" and MODEL in data


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if ".tmp." in p.name)


CMDS = ["create", "extract"]


@pytest.mark.parametrize("cmd", CMDS)
def test_symlink_output_is_refused_and_kept(tmp_path, binaries, bundle, cmd):
    real = tmp_path / "real.out"
    real.write_bytes(b"keep me")
    link = tmp_path / "link.out"
    link.symlink_to(real)
    p = write(cmd, link, tmp_path)
    assert p.returncode == 1, p.stderr
    assert p.stderr == ("apbundle: %s: is a symbolic link to '%s'; give that path to "
                        "write the file it names, or remove the link\n" % (link, real))
    assert os.readlink(link) == str(real)
    assert real.read_bytes() == b"keep me"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("cmd", CMDS)
def test_dangling_symlink_output_is_refused(tmp_path, binaries, bundle, cmd):
    link = tmp_path / "link.out"
    link.symlink_to("nowhere/at/all")
    p = write(cmd, link, tmp_path)
    assert p.returncode == 1
    assert "is a symbolic link to 'nowhere/at/all'" in p.stderr, p.stderr
    assert os.readlink(link) == "nowhere/at/all"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("cmd", CMDS)
def test_fifo_output_is_refused_and_kept(tmp_path, binaries, bundle, cmd):
    fifo = tmp_path / "fifo.out"
    os.mkfifo(fifo)
    p = write(cmd, fifo, tmp_path)
    assert p.returncode == 1, p.stderr
    assert p.stderr == ("apbundle: %s: is a FIFO, not a regular file; nothing was "
                        "written\n" % fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("cmd", CMDS)
def test_device_output_is_refused_and_kept(tmp_path, binaries, bundle, cmd):
    """A copy of /dev/null (char 1:3): as root the old code renamed a
    regular file over it, as it would over /dev/null itself."""
    dev = tmp_path / "null.out"
    os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    p = write(cmd, dev, tmp_path)
    assert p.returncode == 1, p.stderr
    assert p.stderr == ("apbundle: %s: is a character device, not a regular file; "
                        "nothing was written\n" % dev)
    st = os.lstat(dev)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert leftovers(tmp_path) == []


def test_socket_output_is_refused(tmp_path, binaries, bundle):
    path = tmp_path / "s.out"
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(path))
        p = write("extract", path, tmp_path)
    finally:
        s.close()
    assert p.returncode == 1
    assert "is a socket, not a regular file" in p.stderr, p.stderr
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


@pytest.mark.parametrize("cmd", CMDS)
def test_existing_file_of_another_owner_keeps_owner_and_mode(tmp_path, binaries, bundle,
                                                             cmd):
    """As root: a 0600 file of uid 4321 used to become 0644 and root's."""
    out = tmp_path / "theirs.out"
    out.write_bytes(b"old")
    os.chown(out, OTHER_UID, OTHER_GID)
    os.chmod(out, 0o600)
    p = write(cmd, out, tmp_path)
    assert p.returncode == 0, p.stderr
    st = os.lstat(out)
    assert (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == \
        (stat.S_IFREG, 0o600, OTHER_UID, OTHER_GID)
    assert written(cmd, out)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("cmd", CMDS)
def test_new_output_gets_umask_mode(tmp_path, binaries, bundle, cmd):
    out = tmp_path / "new.out"
    old = os.umask(0o027)
    try:
        p = write(cmd, out, tmp_path)
    finally:
        os.umask(old)
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(os.lstat(out).st_mode) == 0o640
    assert written(cmd, out)


def test_unprivileged_caller_keeps_mode_but_not_set_id_bits(binaries):
    """A caller who may not give the file away keeps its permission bits,
    takes it over, and never inherits the previous owner's set-user-ID bit."""
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) not installed")
    d = tempfile.mkdtemp(prefix="apb-owner-")
    try:
        os.chmod(d, 0o777)  # mkdtemp's 0700 would keep the other user out
        src, out = os.path.join(d, "m.bin"), os.path.join(d, "root.out")
        with open(src, "wb") as f:
            f.write(MODEL)
        os.chmod(src, 0o644)
        with open(out, "wb") as f:
            f.write(b"old")
        os.chmod(out, 0o4751)
        p = subprocess.run(["setpriv", "--reuid", str(OTHER_UID), "--regid", str(OTHER_GID),
                            "--clear-groups", str(APBUNDLE), "create", out, src],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        st = os.lstat(out)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == \
            (0o751, OTHER_UID, OTHER_GID)
        assert sorted(os.listdir(d)) == ["m.bin", "root.out"]
    finally:
        shutil.rmtree(d)


def test_extract_to_stdout(tmp_path, binaries, bundle):
    p = subprocess.run([str(APBUNDLE), "extract", bundle, "dir/m.bin", "-o", "-"],
                       capture_output=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout == MODEL
    assert p.stderr == b""
    assert sorted(x.name for x in tmp_path.iterdir()) == ["b.apbundle", "m.bin"]


def test_extract_to_stdout_refuses_a_terminal(tmp_path, binaries, bundle):
    master, slave = pty.openpty()
    try:
        p = subprocess.run([str(APBUNDLE), "extract", bundle, "dir/m.bin", "-o", "-"],
                           stdout=slave, stderr=subprocess.PIPE, timeout=60, cwd=tmp_path)
    finally:
        os.close(slave)
        os.close(master)
    assert p.returncode == 1
    assert p.stderr == (b"apbundle: standard output is a terminal; redirect it "
                        b"or give -o PATH\n")


def test_extract_to_stdout_reports_a_bad_block(tmp_path, binaries):
    """Not atomic: the pieces before the bad block are out already (the
    writer reads 1 MiB of 4 KiB blocks at a time), so the failure must show
    in the exit status and on stderr."""
    model = apbformat.random_bytes(3 * MiB, 72)
    (tmp_path / "m.bin").write_bytes(model)
    b = pack(tmp_path / "b.apbundle", "m.bin=%s" % (tmp_path / "m.bin"), block_size="4K")
    bad = 2 * MiB // 4096 + 5
    data = bytearray(b.read_bytes())
    at = data.find(model[bad * 4096:bad * 4096 + 64])
    assert at > 0
    data[at] ^= 0xFF
    b.write_bytes(bytes(data))
    p = subprocess.run([str(APBUNDLE), "extract", b, "m.bin", "-o", "-"],
                       capture_output=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr == b"apbundle: %s: model 'm.bin' block %d: checksum mismatch\n" % (
        str(b).encode(), bad)
    assert p.stdout == model[:2 * MiB]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["b.apbundle", "m.bin"]
