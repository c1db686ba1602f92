"""What open .stats and .metrics files may cost the daemon (fs/docs.c).

Under allow_other any user may open .stats; each open holds a snapshot
rendered at open. An unprivileged user holding many opens on a bundle of
many models once grew the daemon by a full document per open (1.58 GiB for
100 opens at 100,000 models). Now opens that render the same bytes share one
copy, and distinct live documents hold at most DOCS_BYTES_MAX together:
an open past that fails with ENFILE.
"""

import errno
import json
import os
import subprocess
import sys

import pytest

import apbformat
from conftest import MiB, mount, vm_status
from test_security import NOBODY, open_dir  # noqa: F401 (a fixture)

DOCS_BYTES_MAX = 32 * MiB       # fs/apbfs.h, APBFS_DOCS_BYTES_MAX
N_MODELS = 50000
OPENS = 100
OPTS = {"max_memory": "4M", "allow_other": True, "prefetch": "off",
        "prefetch_count": "0"}

# As uid 65534: open .stats OPENS times and hold every open; between two
# opens, with argv[3] == "distinct", open a model (its open count changes,
# so no two documents are the same). Print, for each open, the length and
# the sha256 of what it reads, or -errno; then wait for a line on stdin
# (the test measures the daemon meanwhile) and close everything.
HOLDER = r"""
import hashlib, json, os, sys
mnt, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
held, out = [], []
for i in range(n):
    if mode == "distinct":
        os.close(os.open(os.path.join(mnt, "m00000"), os.O_RDONLY))
    try:
        fd = os.open(os.path.join(mnt, ".stats"), os.O_RDONLY)
    except OSError as e:
        out.append(-e.errno)
        continue
    held.append(fd)
    data = b""
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            break
        data += b
    out.append([len(data), hashlib.sha256(data).hexdigest()])
print(json.dumps(out), flush=True)
sys.stdin.readline()
for fd in held:
    os.close(fd)
"""


def drop_to_nobody():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def hold_stats(d, mode):
    """Run HOLDER as nobody; return (its per-open results, the daemon's
    VmRSS while the opens are held)."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(d.mnt), str(OPENS), mode],
                         preexec_fn=drop_to_nobody, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd="/")
    try:
        line = p.stdout.readline()
        assert line, "holder failed: %s" % p.stderr.read()
        results = json.loads(line)
        rss = vm_status(d.pid, "VmRSS")
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(60) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return results, rss


@pytest.fixture
def many(open_dir):  # noqa: F811 (the fixture imported above)
    return apbformat.write_v1(open_dir / "many.apbundle",
                              [("m%05d" % i, b"") for i in range(N_MODELS)])


def doc_len(d):
    with open(d.mnt / ".stats", "rb") as f:
        return len(f.read())


@pytest.mark.perf
@pytest.mark.timeout_s(300)
def test_identical_opens_share_one_document(many, open_dir, binaries):  # noqa: F811
    """100 opens held by another user with nothing happening between them:
    every one reads the same document, and the daemon holds it once."""
    with mount(many, OPTS, mnt=open_dir / "mnt") as d:
        one = doc_len(d)
        before = vm_status(d.pid, "VmRSS")
        results, held = hold_stats(d, "same")
        after = d.stats()
    assert one > 4 * MiB, "the bundle makes too small a document to measure: %d" % one
    assert all(isinstance(r, list) for r in results), results
    assert {tuple(r) for r in results} == {(results[0][0], results[0][1])}
    assert results[0][0] == one
    assert after["models"]["m00000"]["opens"] == 0
    # One shared copy, the render being compared, and libfuse's threads
    # and arenas (test_stats.py allows 12 MiB for those); one copy per open
    # would be 100 documents.
    grown = held - before
    assert grown < 2 * one + 12 * MiB, "RSS grew by %.1f MiB holding %d opens of a %.1f MiB " \
        "document" % (grown / MiB, OPENS, one / MiB)


@pytest.mark.perf
@pytest.mark.timeout_s(300)
def test_distinct_opens_stop_at_the_cap_with_enfile(many, open_dir, binaries):  # noqa: F811
    """100 opens held by another user, each document different from the
    last: the documents held stay within DOCS_BYTES_MAX, the open that
    would pass it fails with ENFILE, and the owner's next open after they
    are closed succeeds again."""
    with mount(many, OPTS, mnt=open_dir / "mnt") as d:
        one = doc_len(d)
        before = vm_status(d.pid, "VmRSS")
        results, held = hold_stats(d, "distinct")
        after = d.stats()                      # all closed: room again
    ok = [r for r in results if isinstance(r, list)]
    failed = [r for r in results if not isinstance(r, list)]
    assert ok and failed, "expected some opens admitted and some refused: %s" % results[:5]
    assert set(failed) == {-errno.ENFILE}, failed
    # Admitted while there was room: every open before the first refusal.
    first_refused = results.index(-errno.ENFILE)
    assert all(isinstance(r, list) for r in results[:first_refused])
    assert len({r[1] for r in ok}) == len(ok), "documents were expected to differ"
    assert sum(r[0] for r in ok) <= DOCS_BYTES_MAX
    # The refused one was no smaller than the last admitted (counters
    # only grow), so it would have passed the cap.
    assert sum(r[0] for r in results[:first_refused]) + results[first_refused - 1][0] \
        > DOCS_BYTES_MAX
    assert after["models"]["m00000"]["opens"] == OPENS
    grown = held - before
    assert grown < DOCS_BYTES_MAX + 2 * one + 12 * MiB, \
        "RSS grew by %.1f MiB holding %d opens" % (grown / MiB, len(ok))
