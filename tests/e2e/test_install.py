"""`meson install` gives programs that run as installed (README.md,
"Install"): no ldconfig, no LD_LIBRARY_PATH. The build is installed with
--destdir into a temp dir; the programs there must start, find the
libapbundle.so.0 installed beside them (through their $ORIGIN-relative
RUNPATH), and work on a real bundle."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BUILD, REPO

pytestmark = pytest.mark.skipif(shutil.which("meson") is None,
                                reason="meson is not installed")


def _options():
    out = subprocess.run(["meson", "introspect", "--buildoptions", str(BUILD)],
                         check=True, capture_output=True, text=True).stdout
    return {o["name"]: o["value"] for o in json.loads(out)}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(destdir root, prefix inside it, options) of one install."""
    dest = tmp_path_factory.mktemp("destdir")
    subprocess.run(["meson", "install", "-C", str(BUILD), "--destdir",
                    str(dest), "--no-rebuild", "--quiet"], check=True,
                   capture_output=True, text=True)
    opts = _options()
    root = dest / opts["prefix"].lstrip("/")
    return dest, root, opts


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
    return env


def _libdir(root, opts):
    libdir = opts["libdir"]
    return Path(libdir) if libdir.startswith("/") else root / libdir


def test_installed_files(installed):
    dest, root, opts = installed
    bindir = root / opts["bindir"]
    libdir = _libdir(root, opts)
    for prog in ("apbundle", "apbundlefs"):
        assert (bindir / prog).is_file(), f"{prog} not installed"
    assert (libdir / "libapbundle.so.0").exists()
    assert (libdir / "pkgconfig" / "apbundle.pc").is_file()
    headers = sorted(p.name for p in (REPO / "include" / "apbundle").glob("*.h"))
    inst = sorted(p.name for p in (root / opts["includedir"] / "apbundle").glob("*.h"))
    assert inst == headers, "every public header is installed, and only those"
    datadir = root / opts["datadir"]
    mandir = root / opts["mandir"]
    for page in ("man1/apbundle.1", "man8/apbundlefs.8", "man1/apbreplay.1"):
        text = (mandir / page).read_text()
        assert text.startswith(".\\\" "), page
        assert "@VERSION@" not in text, f"{page}: version not filled in"
    comp = datadir / "bash-completion" / "completions" / "apbundle"
    assert "complete -F _apbundle apbundle" in comp.read_text()


@pytest.mark.parametrize("prog,expect", [("apbundle", "apbundle "),
                                         ("apbundlefs", "apbundlefs ")])
def test_installed_programs_start(installed, prog, expect):
    dest, root, opts = installed
    exe = root / opts["bindir"] / prog
    r = subprocess.run([str(exe), "--version"], env=_env(),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(expect), r.stdout


def test_cli_uses_the_installed_library(installed):
    """ldd resolves libapbundle.so.0 to the copy under the install, not the
    build dir nor one installed system-wide."""
    dest, root, opts = installed
    exe = root / opts["bindir"] / "apbundle"
    out = subprocess.run(["ldd", str(exe)], env=_env(), check=True,
                         capture_output=True, text=True).stdout
    line = [ln for ln in out.splitlines() if "libapbundle.so" in ln]
    assert len(line) == 1, out
    target = Path(line[0].split("=>")[1].split("(")[0].strip()).resolve()
    assert target == (_libdir(root, opts) / "libapbundle.so.0").resolve(), out
    assert "not found" not in out, out


def test_installed_cli_creates_and_lists(installed, tmp_path):
    dest, root, opts = installed
    exe = root / opts["bindir"] / "apbundle"
    src = tmp_path / "m.bin"
    src.write_bytes(bytes(range(256)) * 64)
    bundle = tmp_path / "b.apbundle"
    r = subprocess.run([str(exe), "create", str(bundle), f"m={src}"],
                       env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe), "verify", str(bundle)], env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe), "list", str(bundle)], env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "m" in r.stdout.split()
