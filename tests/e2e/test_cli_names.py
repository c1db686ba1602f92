"""Names the `apbundle` command did not choose - from a bundle or a .stats
document - are printed escaped (docs/USAGE.md, "How names are printed"):
control characters, invalid UTF-8 and the characters a terminal or a
bidirectional layout acts on as \\xNN, a backslash as \\\\, to a terminal
or not."""

import subprocess

import pytest

from conftest import APBUNDLE, pack, run_apbundle

# A .stats document as someone other than the daemon could write it: the
# strings hold a terminal title sequence, a clear-screen, an 8-bit CSI
# (U+009B), a right-to-left override, raw bytes that are not UTF-8, and a
# backslash that must not pass for an escape.
CRAFTED_STATS = (
    b'{"cache":{"policy":"\\u001b]0;pwned\\u0007lru","chunk_size":65536,'
    b'"hits":1,"misses":1},"io":{},"models":{'
    b'"\\u001b[2Jred":{"size":10,"resident_bytes":5},'
    b'"csi\\u009b31m":{"size":1},'
    b'"back\\\\slash":{"size":1},'
    b'"bad\xff\xc3":{"size":2},'
    b'"rtl\\u202egnp.exe":{"size":3}}}')

CRAFTED_OUT = (
    "cache     \\x1b]0;pwned\\x07lru, 64.0 KiB chunks, 0 resident\n"
    "memory    0 B used of 0 B (-)\n"
    "hit rate  50.0% (1 hits, 1 misses, 0 evictions)\n"
    "prefetch  0 issued, 0 hits, 0 wasted\n"
    "io        0 B read from the bundle, 0 B served, 0 errors, 0 checksum errors\n"
    "\n"
    "MODEL                        SIZE   RESIDENT      HITS    MISSES  EVICTIONS   OPENS  PINNED\n"
    "\\x1b[2Jred                   10 B        5 B         0         0          0       0  no\n"
    "back\\\\slash                   1 B        0 B         0         0          0       0  no\n"
    "bad\\xff\\xc3                   2 B        0 B         0         0          0       0  no\n"
    "csi\\xc2\\x9b31m                1 B        0 B         0         0          0       0  no\n"
    "rtl\\xe2\\x80\\xaegnp.exe        3 B        0 B         0         0          0       0  no\n")


def test_stats_escapes_a_crafted_document(tmp_path, binaries):
    (tmp_path / ".stats").write_bytes(CRAFTED_STATS)
    p = subprocess.run([str(APBUNDLE), "stats", tmp_path], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode("ascii")  # not one byte outside ASCII is left
    assert out.split("\n\n", 1)[1] == CRAFTED_OUT


# Names the rules accept (valid UTF-8, no C0 control) that still act on a
# terminal or on how a line reads.
NAMES = {
    "csi\u009b31m": "csi\\xc2\\x9b31m",
    "rtl\u202egnp.exe": "rtl\\xe2\\x80\\xaegnp.exe",
    "back\\x1b": "back\\\\x1b",
    "caf\u00e9/plain": "caf\u00e9/plain",
}


@pytest.fixture
def hostile_bundle(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"12345")
    return pack(tmp_path / "b.apbundle",
                *["%s=%s" % (n, tmp_path / "f.bin") for n in NAMES])


def test_list_escapes_names_and_keeps_columns(hostile_bundle, binaries):
    p = run_apbundle("list", hostile_bundle, check=True)
    lines = p.stdout.splitlines()
    width = max(len(v) for v in NAMES.values())  # "rtl\xe2\x80\xaegnp.exe"
    assert lines[0].startswith("NAME".ljust(width) + "  SIZE  STORED  ")
    rows = sorted(NAMES.items())
    assert len(lines) == 1 + len(rows)
    for line, (_, shown) in zip(lines[1:], rows):
        assert line.startswith(shown.ljust(width) + "     5       5  none  "), line


def test_verify_escapes_names(hostile_bundle, binaries):
    p = run_apbundle("verify", hostile_bundle, check=True)
    assert p.stdout == "".join("OK %s\n" % shown for _, shown in sorted(NAMES.items()))
