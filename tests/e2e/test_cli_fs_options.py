"""apbundlefs names an option it does not know in one line, instead of
libfuse's "fuse: unknown option(s): `-o foo=1'" (docs/USAGE.md, "Mount
options"): exit status 2, nothing mounted, and before the bundle is opened,
so a typo is reported even when the bundle is missing or a slow URL."""

import os
import subprocess

import pytest

from conftest import APBUNDLEFS, mount, pack, read_all

DATA = b"0123456789" * 1000


@pytest.fixture
def bundle(tmp_path):
    (tmp_path / "m.bin").write_bytes(DATA)
    return pack(tmp_path / "b.apbundle", str(tmp_path / "m.bin"))


def run_fs(*args, timeout=30):
    return subprocess.run([str(APBUNDLEFS), "-f", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args,message", [
    (["-o", "foo=1"], "unknown option 'foo=1'"),
    (["-o", "max_memory=8M,foo=1"], "unknown option 'foo=1'"),
    (["-o", "foo=1,bar"], "unknown options 'foo=1', 'bar'"),
    (["-o", "foo", "-o", "bar=2"], "unknown options 'foo', 'bar=2'"),
    (["--bogus"], "unknown option '--bogus'"),
    (["-d", "-o", "foo=1"], "unknown option 'foo=1'"),  # libfuse logs its version first
    (["-o", "max_write=many"], "unknown option 'max_write=many'"),
])
def test_unknown_option_is_named(bundle, tmp_path, binaries, args, message):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for target in (bundle, tmp_path / "missing.apbundle"):
        p = run_fs(*args, target, mnt)
        assert (p.returncode, p.stdout) == (2, ""), p
        assert p.stderr == "apbundlefs: %s (see apbundlefs --help)\n" % message
    assert not any(mnt.iterdir())


def test_libfuse_options_still_pass(bundle, binaries):
    """Options libfuse knows (here mount options) are still handed to it."""
    with mount(bundle, {"noatime": True, "nosuid": True}) as d:
        assert read_all(d.path("m.bin")) == DATA
        mnt = os.path.realpath(str(d.mnt))
        with open("/proc/self/mountinfo") as f:
            flags = [line.split()[5].split(",") for line in f if line.split()[4] == mnt]
        assert len(flags) == 1 and {"noatime", "nosuid"} <= set(flags[0]), flags
