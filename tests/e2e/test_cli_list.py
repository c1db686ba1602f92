"""`apbundle list --json` and `--tsv` (docs/USAGE.md, "list for scripts"):
exact bytes for names with spaces, quotes, backslashes and characters a
terminal acts on; the JSON parses back to the names and the TSV decodes
back to them; names a bundle may not hold (tab, newline, invalid UTF-8)
make every form fail with nothing on stdout."""

import json
import os
import re
import subprocess

import pytest

import apbformat
from conftest import APBUNDLE, pack, run_apbundle

DATA = b"12345"
SUM = apbformat.checksum_str(DATA)

# name -> (its JSON string, its TSV field)
NAMES = {
    "a b/with space.bin": ('"a b/with space.bin"', "a b/with space.bin"),
    'q"uote': ('"q\\"uote"', 'q"uote'),
    "back\\slash": ('"back\\\\slash"', "back\\\\slash"),
    "caf\u00e9": ('"caf\u00e9"', "caf\u00e9"),
    "csi\u009b31m": ('"csi\\u009b31m"', "csi\\xc2\\x9b31m"),
    "rtl\u202egnp.exe": ('"rtl\\u202egnp.exe"', "rtl\\xe2\\x80\\xaegnp.exe"),
    "ls\u2028x": ('"ls\\u2028x"', "ls\\xe2\\x80\\xa8x"),
    "x,y 2 ": ('"x,y 2 "', "x,y 2 "),
}


@pytest.fixture
def bundle(tmp_path):
    (tmp_path / "f.bin").write_bytes(DATA)
    return pack(tmp_path / "b.apbundle", *["%s=%s" % (n, tmp_path / "f.bin") for n in NAMES])


def run_list(*args):
    """`apbundle list ARGS` with bytes out (and bytes or str arguments)."""
    argv = [str(APBUNDLE), "list"] + [a if isinstance(a, bytes) else str(a) for a in args]
    return subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


def list_bytes(*args):
    p = run_list(*args)
    assert p.returncode == 0, p.stderr
    assert p.stderr == b""
    return p.stdout


def tsv_decode(field):
    """Undo the escaping of "How names are printed": \\\\ and \\xNN."""
    out = bytearray()
    for m in re.finditer(rb"\\\\|\\x([0-9a-f]{2})|[^\\]", field.encode()):
        out += b"\\" if m.group(0) == b"\\\\" else (
            bytes([int(m.group(1), 16)]) if m.group(1) else m.group(0))
    return out.decode("utf-8")


def test_json_exact(bundle, binaries):
    rows = ['{"name":%s,"size":5,"stored_size":5,"compression":"none",'
            '"block_size":65536,"block_count":1,"checksum":"%s"}' % (NAMES[n][0], SUM)
            for n in sorted(NAMES, key=lambda n: n.encode())]
    expected = ('{"schema":1,"apbundle":"0.1.0","bundle":"%s","layout":"v2","version":2,'
                '"model_count":%d,"models":[\n%s]}\n' % (bundle, len(NAMES), ",\n".join(rows)))
    out = list_bytes("--json", bundle)
    assert out == expected.encode("utf-8")
    doc = json.loads(out)
    assert [m["name"] for m in doc["models"]] == sorted(NAMES, key=lambda n: n.encode())


def test_tsv_exact(bundle, binaries):
    expected = "".join("%s\t5\t5\tnone\t65536\t%s\n" % (NAMES[n][1], SUM)
                       for n in sorted(NAMES, key=lambda n: n.encode()))
    out = list_bytes("--tsv", bundle)
    assert out == expected.encode("utf-8")
    names = [tsv_decode(line.split("\t")[0]) for line in out.decode().splitlines()]
    assert names == sorted(NAMES, key=lambda n: n.encode())


def test_json_and_tsv_of_other_layouts(tmp_path, binaries):
    m = apbformat.random_bytes(70000, 3)
    v1 = apbformat.write_v1(tmp_path / "v1.apbundle", [("a b", m)])
    apr = apbformat.write_aprender(tmp_path / "apr.apbundle", [("a b", m)])
    doc = json.loads(list_bytes("--json", v1))
    assert (doc["layout"], doc["version"]) == ("v1", 1)
    assert doc["models"] == [{"name": "a b", "size": 70000, "stored_size": 70000,
                              "compression": "none", "block_size": None,
                              "block_count": None, "checksum": apbformat.checksum_str(m)}]
    assert list_bytes("--tsv", v1) == ("a b\t70000\t70000\tnone\t-\t%s\n"
                                       % apbformat.checksum_str(m)).encode()
    doc = json.loads(list_bytes("--json", apr))
    assert (doc["layout"], doc["version"], doc["models"][0]["checksum"]) == ("aprender", None, None)
    assert list_bytes("--tsv", apr) == b"a b\t70000\t70000\tnone\t-\t-\n"


def test_json_of_zstd_bundle(tmp_path, binaries):
    (tmp_path / "z.bin").write_bytes(bytes(200000))
    b = pack(tmp_path / "z.apbundle", str(tmp_path / "z.bin"), compress="zstd")
    doc = json.loads(list_bytes("--json", b))
    (m,) = doc["models"]
    assert (m["compression"], m["size"], m["block_size"], m["block_count"]) == ("zstd", 200000, 65536, 4)
    assert 0 < m["stored_size"] < 4096  # zeros shrink to a few bytes a block
    line = list_bytes("--tsv", b).decode()
    assert line == "z.bin\t200000\t%d\tzstd\t65536\t%s\n" % (
        m["stored_size"], apbformat.checksum_str(bytes(200000)))


@pytest.mark.parametrize("name,shown,reason", [
    ("a\tb", "a\\x09b", "contains control character 0x09 at byte 1"),
    ("a\nb", "a\\x0ab", "contains control character 0x0a at byte 1"),
    (b"a\xffb", "a\\xffb", "invalid UTF-8 at byte 1"),
])
@pytest.mark.parametrize("form", [[], ["--json"], ["--tsv"]])
def test_names_no_bundle_may_hold_fail_every_form(tmp_path, binaries, name, shown, reason, form):
    path = tmp_path / "bad.apbundle"
    if isinstance(name, bytes):
        apbformat.write_aprender(path, [(name, DATA)])
    else:
        apbformat.write_v1(path, [(name, DATA)])
    p = run_apbundle("list", *form, path)
    assert (p.returncode, p.stdout) == (1, "")
    assert p.stderr == "apbundle: %s: name '%s': %s\n" % (path, shown, reason)


def test_json_and_tsv_exclude_each_other(bundle, binaries):
    p = run_apbundle("list", "--json", "--tsv", bundle)
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr.startswith("apbundle: --json and --tsv exclude each other\nUsage: apbundle list ")


def test_json_bundle_operand_not_utf8_stays_valid(tmp_path, binaries):
    """The one string of the document a user chooses: a path that is not
    UTF-8 becomes U+FFFD, and the document still parses."""
    (tmp_path / "f.bin").write_bytes(DATA)
    pack(tmp_path / "b.apbundle", str(tmp_path / "f.bin"))
    odd = os.fsencode(tmp_path) + b"/b\xff.apbundle"
    os.rename(tmp_path / "b.apbundle", odd)
    p = run_list("--json", odd)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout.decode("utf-8"))
    assert doc["bundle"] == str(tmp_path) + "/b\ufffd.apbundle"
