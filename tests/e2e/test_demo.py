"""scripts/demo.sh (the README's first run) says one line per step, shows
a failing step's log, colours only a terminal that wants colour, takes an
absolute BUILD_DIR and ends with the models tesseract read in the cache
table. tesseract is installed by scripts/test.sh (see test_tesseract.py)."""

import os
import re
import subprocess

from conftest import BUILD, REPO, run_on_pty

DEMO = REPO / "scripts" / "demo.sh"


def env(**kw):
    e = dict(os.environ, BUILD_DIR=str(BUILD))
    e.pop("NO_COLOR", None)
    e.update(kw)
    return e


def run_piped(**kw):
    return subprocess.run(["bash", str(DEMO)], capture_output=True, text=True, timeout=300,
                          env=env(**kw), stdin=subprocess.DEVNULL)


def run_demo_on_pty(**kw):
    rc, out = run_on_pty(["/bin/bash", str(DEMO)], env(**kw), timeout=300)
    return rc, out.decode().replace("\r\n", "\n")


def check_story(out):
    assert "\n== Packages\n" in out and "packages present\n" in out
    assert "\n== Building in %s\nninja ... done\n" % BUILD in out
    m = re.search(r"^created /tmp/apbundlefs-demo\.\w+/tessdata\.apbundle: (\d+) models, ", out, re.M)
    assert m, out
    assert "    Hello, tesseract!\n" in out
    # The table holds the one model tesseract read, not all of them by residency.
    table = out.split("\ntop 1 of %s models by chunk lookups\n\nMODEL " % m.group(1))[1]
    rows = table.split("\n\n")[0].splitlines()[1:]
    assert len(rows) == 1 and rows[0].startswith("eng.traineddata "), rows
    assert out.endswith("== Unmounting\ndaemon exited cleanly\n")


def test_piped_absolute_build_dir_no_escapes(binaries):
    assert BUILD.is_absolute()
    p = run_piped()
    assert p.returncode == 0, p.stdout + p.stderr
    assert "\033" not in p.stdout + p.stderr
    check_story(p.stdout)


def test_terminal_gets_colour(binaries):
    rc, out = run_demo_on_pty()
    assert rc == 0, out
    assert "\n\033[1m== Packages\033[0m\n" in out
    check_story(re.sub(r"\033\[[01]m", "", out))


def test_no_color_on_a_terminal(binaries):
    rc, out = run_demo_on_pty(NO_COLOR="1")
    assert rc == 0, out
    assert "\033" not in out
    check_story(out)


def test_a_failing_step_shows_its_log(tmp_path, binaries):
    build = tmp_path / "build"
    build.mkdir()
    (build / "build.ninja").write_text("this is not ninja syntax\n")
    p = run_piped(BUILD_DIR=str(build))
    assert p.returncode == 1
    m = re.search(r"^ninja \.\.\. failed \(exit 1\); the last lines of (\S+):\n", p.stdout, re.M)
    assert m, p.stdout
    log = m.group(1)
    try:
        assert "    ninja: error: build.ninja:1: " in p.stdout
        assert open(log).read().count("ninja: error: build.ninja:1: ") == 1
    finally:
        os.unlink(log)
    assert "\033" not in p.stdout
