""".control runs lines, however they are split into writes (fs/control.c).

Each open keeps its unfinished line until a write brings the newline; close()
runs a last line that has none and returns its error; a line longer than
the longest command ("prefetch " + a name of 4096 bytes + "\\r") fails with
ENAMETOOLONG and the rest of it is dropped. Which model's chunks are
resident shows what ran.
"""

import errno
import os
import subprocess

import pytest

import apbformat
from conftest import KiB, direct_read, mount, wait_until

CH = 64 * KiB
A = apbformat.random_bytes(3 * CH, 21)
AB = apbformat.random_bytes(2 * CH, 22)
# The longest name there is: 4096 bytes in 17 components of at most 255.
LONGEST = "/".join(["x" * 255] * 15 + ["y" * 254, "z"])
assert len(LONGEST.encode()) == 4096
LONG = apbformat.random_bytes(100, 23)
OPTS = {"max_memory": "8M", "chunk_size": "64K", "prefetch": "off", "prefetch_count": "0"}


@pytest.fixture
def fs(tmp_path, binaries):
    bundle = apbformat.write_v1(tmp_path / "c.apbundle",
                                [("a", A), ("ab", AB), (LONGEST, LONG)])
    with mount(bundle, OPTS) as d:
        yield d


def resident(d):
    """Resident bytes of a and ab."""
    m = d.stats()["models"]
    return m["a"]["resident_bytes"], m["ab"]["resident_bytes"]


def load_both(d):
    assert direct_read(d.path("a"), len(A), 0) == A
    assert direct_read(d.path("ab"), len(AB), 0) == AB
    assert resident(d) == (len(A), len(AB))


def open_control(d):
    return os.open(str(d.path(".control")), os.O_WRONLY)


def write(fd, data):
    assert os.write(fd, data) == len(data)


def test_a_line_split_over_two_writes_runs_whole(fs):
    """write("evict a") then write("b\\n") is "evict ab": before, the first
    write evicted a and the second failed with EINVAL."""
    load_both(fs)
    fd = open_control(fs)
    try:
        write(fd, b"evict a")
        assert resident(fs) == (len(A), len(AB)), "an unfinished line ran"
        write(fd, b"b\n")
        assert resident(fs) == (len(A), 0)
    finally:
        os.close(fd)
    assert resident(fs) == (len(A), 0)
    assert fs.stats()["cache"]["evictions"] == 2


def test_a_100k_script_piped_in_one_go(fs):
    """A script of 9-byte lines through a pipe: cat writes what each read of
    the pipe returns, and the kernel splits the writes, so lines are cut
    anywhere; every line still runs whole. The last lines leave a evicted
    and ab pinned."""
    load_both(fs)
    script = b"evict ab\n" * (100 * KiB // 9) + b"evict a\npin ab\n"
    assert len(script) >= 100 * KiB
    with open(str(fs.path(".control")), "wb") as out:
        p = subprocess.run(["cat"], input=script, stdout=out, stderr=subprocess.PIPE,
                           timeout=60)
    assert p.returncode == 0, p.stderr
    assert resident(fs) == (0, len(AB))
    assert fs.stats()["cache"]["pinned_bytes"] == 2 * CH


def test_a_last_line_without_newline_runs_at_close(fs):
    load_both(fs)
    fd = open_control(fs)
    try:
        write(fd, b"evict a")
        assert resident(fs) == (len(A), len(AB))
    finally:
        os.close(fd)                                  # no error: it ran
    assert resident(fs) == (0, len(AB))
    # printf writes no newline: the shell's close runs the command.
    p = subprocess.run(["sh", "-c", 'printf clear > "$1"', "sh", str(fs.path(".control"))],
                       stderr=subprocess.PIPE, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert resident(fs) == (0, 0)


@pytest.mark.parametrize("last", [b"evict nosuch", b"frobnicate", b"evict a\nevict"])
def test_close_reports_the_error_of_the_last_line(fs, last):
    load_both(fs)
    fd = open_control(fs)
    write(fd, last)
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.EINVAL
    a = 0 if last.startswith(b"evict a\n") else len(A)
    assert resident(fs) == (a, len(AB))


def test_the_longest_command_fits_and_one_byte_more_does_not(fs):
    """ "prefetch " + a 4096-byte name + "\\r\\n", written 7 bytes at a
    time, runs; a line one byte longer fails its write with ENAMETOOLONG,
    the rest of that line is dropped up to its newline, and the lines after
    it run."""
    line = b"prefetch " + LONGEST.encode() + b"\r\n"
    fd = open_control(fs)
    try:
        for i in range(0, len(line), 7):
            write(fd, line[i:i + 7])
    finally:
        os.close(fd)
    wait_until(lambda: fs.stats()["models"][LONGEST]["resident_bytes"] == len(LONG), 10,
               what="the prefetch of the longest name")

    load_both(fs)
    fd = open_control(fs)
    try:
        write(fd, b"evict " + b"a" * 4096)            # 4102: fits, no newline yet
        with pytest.raises(OSError) as e:
            os.write(fd, b"aaaaa")                   # 4107: longer than any command
        assert e.value.errno == errno.ENAMETOOLONG
        write(fd, b"more of it\nevict ab\n")
        assert resident(fs) == (len(A), 0)
    finally:
        os.close(fd)
    assert resident(fs) == (len(A), 0)
