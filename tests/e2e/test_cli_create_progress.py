"""What `apbundle create` says (docs/USAGE.md, "create's progress"): on a
terminal a line with percent, rate and ETA; always one summary line on
stderr at the end; with --progress=json JSON lines on stdout for tools,
whatever stdout is."""

import json
import os
import re
import subprocess

import pytest

from conftest import APBUNDLE, MiB, run_on_pty

SUMMARY = re.compile(r"^created (.+): (\d+) models?, (\S+ \S+) in, (\S+ \S+) written "
                     r"\(ratio (\S+)\), (\d+)\.(\d{3}) s\n$")


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "a.bin").write_bytes(os.urandom(300000))
    (tmp_path / "b.bin").write_bytes(bytes(700000))
    return [tmp_path / "a.bin", tmp_path / "b.bin"]


def create(*args):
    return subprocess.run([str(APBUNDLE), "create", *map(str, args)], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_summary_when_piped(tmp_path, binaries, inputs):
    out = tmp_path / "b.apbundle"
    p = create(out, *inputs)
    assert (p.returncode, p.stdout) == (0, "")
    m = SUMMARY.match(p.stderr)
    assert m, p.stderr
    size = out.stat().st_size
    assert m.group(1) == str(out) and m.group(2) == "2"
    assert m.group(3) == "976.6 KiB"  # 1,000,000 bytes
    assert m.group(5) == "%.2f" % (size / 1000000)
    assert "\r" not in p.stderr and "\033" not in p.stderr


def test_summary_of_one_empty_model(tmp_path, binaries):
    (tmp_path / "e").write_bytes(b"")
    p = create(tmp_path / "b.apbundle", tmp_path / "e")
    m = SUMMARY.match(p.stderr)
    assert m and m.group(2) == "1" and m.group(3) == "0 B" and m.group(5) == "-", p.stderr


def test_json_lines(tmp_path, binaries, inputs):
    out = tmp_path / "b.apbundle"
    p = create("--progress=json", out, *inputs)
    assert p.returncode == 0, p.stderr
    assert SUMMARY.match(p.stderr), p.stderr
    lines = [json.loads(l) for l in p.stdout.splitlines()]
    progress, done = lines[:-1], lines[-1]
    assert progress[0] == {"event": "progress", "done": 0, "total": 1000000,
                           "seconds": progress[0]["seconds"]}
    assert progress[-1]["done"] == 1000000
    assert all(l["event"] == "progress" and l["total"] == 1000000 for l in progress)
    assert [l["done"] for l in progress] == sorted(l["done"] for l in progress)
    size = out.stat().st_size
    assert done == {"event": "done", "bundle": str(out), "models": 2, "bytes": 1000000,
                    "written": size, "ratio": round(size / 1000000, 4),
                    "seconds": done["seconds"]}


def test_json_says_nothing_on_failure(tmp_path, binaries):
    p = create("--progress=json", tmp_path / "b.apbundle", tmp_path / "missing.bin")
    assert (p.returncode, p.stdout) == (1, "")
    assert not SUMMARY.search(p.stderr)


def test_bad_progress_value(tmp_path, binaries, inputs):
    p = create("--progress=loud", tmp_path / "b.apbundle", *inputs)
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr.startswith("apbundle: --progress: 'loud' is not auto, json or none\n")


def run_create_on_pty(args):
    """apbundle create ARGS with stdin, stdout and stderr a terminal."""
    rc, out = run_on_pty([str(APBUNDLE), "create", *args])
    return rc, out.decode()


def test_terminal_line_has_rate_and_eta(tmp_path, binaries):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:  # above the 64 MiB a line needs; sparse
        f.truncate(65 * MiB)
    rc, text = run_create_on_pty([tmp_path / "b.apbundle", big])
    assert rc == 0, text
    lines = text.split("\r")
    # The last update is 100% with the mean rate and ETA 0:00, then the
    # line is cleared and the summary follows.
    assert re.fullmatch(r" 100% 65\.0 MiB / 65\.0 MiB  \S+ \S+/s  ETA 0:00\033\[K", lines[-3]), lines[-3:]
    assert lines[-2] == "\033[K" + lines[-2][3:] and lines[-2].startswith("\033[Kcreated ")
    assert SUMMARY.match(lines[-2][3:] + "\n"), lines[-2]
    assert all(re.fullmatch(r" *\d+% .*\033\[K", l) for l in lines[1:-2]), lines[1:-2]


def test_terminal_none_shows_only_the_summary(tmp_path, binaries):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(65 * MiB)
    rc, text = run_create_on_pty(["--progress=none", tmp_path / "b.apbundle", big])
    assert rc == 0, text
    assert "\033" not in text and "%" not in text
    assert SUMMARY.match(text.replace("\r\n", "\n")), text
