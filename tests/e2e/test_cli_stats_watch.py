"""`apbundle stats --watch[=SECONDS] [--count N] [--top N]` (docs/USAGE.md,
"apbundle stats --watch"): one block per sample, what changed since the
previous one and the rates computed from it; in place on a terminal
(escape codes), plain blocks otherwise. The samples are made deterministic
by serving .stats from a FIFO: each document is written only after the
block of the previous one was printed, so every block shows exactly the
counters the test wrote."""

import json
import os
import re
import select
import subprocess

import pytest

from conftest import APBUNDLE, MiB, mount, open_direct, pack, run_on_pty

BASE = {"cache": {"policy": "auto", "chunk_size": 65536, "hits": 100, "misses": 10,
                  "reuse_hits": 50, "evictions": 0},
        "io": {"backing_bytes_read": 1000000, "bytes_served": 2000000},
        "models": {"a": {"size": 10, "hits": 5, "misses": 1},
                   "b b": {"size": 10, "hits": 50, "misses": 2},
                   "c": {"size": 10, "hits": 1, "misses": 0}}}

INTERVAL = re.compile(r"^interval  (\d+)\.(\d{3}) s: \+(\d+) hits, \+(\d+) misses, "
                      r"\+(\d+) bytes read from the bundle, \+(\d+) bytes served$", re.M)
RATES = re.compile(r"^rates     (\S+) hits/s, (\S+) misses/s, (\S+) MB/s read from the "
                   r"bundle, (\S+) MB/s served$", re.M)


def doc(hits=0, misses=0, read=0, served=0, model_hits=None):
    d = json.loads(json.dumps(BASE))
    d["cache"]["hits"] += hits
    d["cache"]["misses"] += misses
    d["io"]["backing_bytes_read"] += read
    d["io"]["bytes_served"] += served
    for name, h in (model_hits or {}).items():
        d["models"][name]["hits"] += h
    return json.dumps(d).encode()


class Watch:
    """`apbundle stats ARGS DIR` with DIR/.stats a FIFO fed doc by doc."""

    def __init__(self, tmp_path, args, docs):
        self.fifo = tmp_path / ".stats"
        os.mkfifo(self.fifo)
        self.proc = subprocess.Popen([str(APBUNDLE), "stats", *args, str(tmp_path)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL)
        self.out = b""
        self.docs = docs

    def feed(self, data):
        # The program opens the FIFO for its next sample; open blocks until then.
        with open(self.fifo, "wb") as f:
            f.write(data)

    def read_blocks(self, n):
        """Bytes until the n-th block is complete (its last model row)."""
        while self.out.count(b"\nMODEL ") < n or not self.out.endswith(b"no\n"):
            r, _, _ = select.select([self.proc.stdout], [], [], 30)
            assert r, "no output in 30 s: %r" % self.out
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            assert chunk, "EOF after %r\n%s" % (self.out, self.proc.stderr.read())
            self.out += chunk
        return self.out

    def run(self):
        try:
            for i, d in enumerate(self.docs):
                self.feed(d)
                self.read_blocks(i + 1)
            assert self.proc.wait(30) == 0, self.proc.stderr.read()
            self.out += self.proc.stdout.read()
            return self.out.decode()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def blocks(text):
    return [b for b in re.split(r"(?m)^(?=stats of )", text) if b]


def test_rates_are_the_deltas_over_the_printed_interval(tmp_path, binaries):
    docs = [doc(), doc(hits=300, misses=12, read=3000000, served=4500000),
            doc(hits=300, misses=12, read=3000000, served=4500000)]
    out = Watch(tmp_path, ["--watch=0.1", "--count=3"], docs).run()
    assert "\033" not in out
    bs = blocks(out)
    assert len(bs) == 3
    assert bs[0].splitlines()[1:3] == ["interval  - (first sample)", "rates     -"]
    assert bs[1].startswith("stats of %s at " % tmp_path)
    for b, want in ((bs[1], (300, 12, 3000000, 4500000)), (bs[2], (0, 0, 0, 0))):
        m = INTERVAL.search(b)
        assert m, b
        ms = int(m.group(1)) * 1000 + int(m.group(2))
        assert ms > 0
        assert tuple(int(x) for x in m.groups()[2:]) == want
        r = RATES.search(b).groups()
        assert r == ("%.1f" % (want[0] * 1000.0 / ms), "%.1f" % (want[1] * 1000.0 / ms),
                     "%.2f" % (want[2] * 1000.0 / ms / 1e6), "%.2f" % (want[3] * 1000.0 / ms / 1e6))
    # Separated by one blank line, each block whole.
    assert out.count("\n\nstats of ") == 2


def test_counters_that_go_back_show_no_rates(tmp_path, binaries):
    out = Watch(tmp_path, ["--watch=0.1", "--count=2"], [doc(hits=5), doc()]).run()
    b = blocks(out)[1]
    assert re.search(r"^interval  \d+\.\d{3} s: counters missing or went back \(a new daemon\?\)\n"
                     r"rates     -\n", b, re.M), b


def test_top_ranks_by_lookups_in_the_interval(tmp_path, binaries):
    docs = [doc(), doc(model_hits={"c": 7})]
    out = Watch(tmp_path, ["--watch=0.1", "--count=2", "--top", "2"], docs).run()
    b0, b1 = blocks(out)
    rows = lambda b: [l.split("  ")[0].strip() for l in b.split("\nMODEL ")[1].splitlines()[1:] if l]
    # First sample: by all lookups (b b 52, a 6, c 1); then by the interval's (c +7).
    assert "top 2 of 3 models by chunk lookups\n" in b0 and rows(b0) == ["b b", "a"]
    assert "top 2 of 3 models by chunk lookups in the interval\n" in b1
    assert rows(b1) == ["c", "b b"]


def test_top_without_watch(tmp_path, binaries):
    (tmp_path / ".stats").write_bytes(doc())
    p = subprocess.run([str(APBUNDLE), "stats", "--top", "1", str(tmp_path)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.endswith("top 1 of 3 models by chunk lookups\n\n"
                             "MODEL       SIZE   RESIDENT      HITS    MISSES  EVICTIONS   OPENS  PINNED\n"
                             "b b         10 B        0 B        50         2          0       0  no\n")
    assert "interval" not in p.stdout


def test_terminal_redraws_in_place(tmp_path, binaries):
    (tmp_path / ".stats").write_bytes(doc())
    rc, out = run_on_pty([str(APBUNDLE), "stats", "--watch=0.1", "--count=2", str(tmp_path)],
                         timeout=30)
    assert rc == 0
    text = out.decode().replace("\r\n", "\n")
    # Each block starts by going home and clearing the screen below.
    assert text.startswith("\033[H\033[Jstats of %s at " % tmp_path), text[:80]
    assert text.count("\033[H\033[Jstats of ") == 2
    assert text.count("\033") == 4
    assert "\n\nstats of" not in text


@pytest.mark.parametrize("args,message", [
    (["--count=2"], "--count needs --watch"),
    (["--watch=0"], "--watch: '0' is not a number of seconds from 0.1 to 86400"),
    (["--watch=soon"], "--watch: 'soon' is not a number of seconds from 0.1 to 86400"),
    (["--top", "0"], "--top: '0' is not a whole number above 0"),
    (["--watch", "--count=x"], "--count: 'x' is not a whole number above 0"),
])
def test_bad_watch_options(tmp_path, binaries, args, message):
    p = subprocess.run([str(APBUNDLE), "stats", *args, str(tmp_path)],
                       capture_output=True, text=True, timeout=30)
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr.startswith("apbundle: %s\nUsage: apbundle stats " % message), p.stderr


def test_watch_a_mount_counts_the_bytes_read(tmp_path, binaries):
    """A real daemon: the bytes served added up over the intervals are the
    bytes the test read between the first and the last sample."""
    data = os.urandom(MiB)
    (tmp_path / "m.bin").write_bytes(data)
    b = pack(tmp_path / "b.apbundle", str(tmp_path / "m.bin"))
    with mount(b, {"max_memory": "8M", "prefetch": "off"}) as d:
        proc = subprocess.Popen([str(APBUNDLE), "stats", "--watch=1", "--count=3", str(d.mnt)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = proc.stdout.readline()
            assert first.startswith("stats of "), first
            fd = open_direct(d.path("m.bin"))
            try:
                got = b"".join(os.pread(fd, 65536, off) for off in range(0, MiB, 65536))
            finally:
                os.close(fd)
            assert got == data
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        deltas = [tuple(int(x) for x in m.groups()[2:]) for m in INTERVAL.finditer(out)]
        assert len(deltas) == 2, out
        assert sum(x[3] for x in deltas) == MiB          # bytes served
        assert sum(x[2] for x in deltas) == MiB          # read from the bundle, once
        assert sum(x[0] + x[1] for x in deltas) == 16    # one lookup per 64K read
