"""Bundles in aprender's own binary layout mount and read byte-exact."""

import mmap
import os
import random
import stat

import pytest

import apbformat
from conftest import KiB, mount, run_apbundle

MODELS = [
    ("encoder.bin", apbformat.random_bytes(300 * KiB + 7, 41)),   # data packed, unaligned
    ("empty.bin", b""),
    ("tiny", b"x"),
    ("decoder/weights.bin", apbformat.random_bytes(123457, 42)),
    ("decoder/config.json", b'{"layers": 12}'),
]


@pytest.fixture(scope="module")
def mounted(tmp_path_factory, binaries):
    path = apbformat.write_aprender(tmp_path_factory.mktemp("apr") / "a.apbundle", MODELS)
    with mount(path, {"max_memory": "256K", "chunk_size": "64K"}, persistent=True) as d:
        yield d, path


@pytest.mark.parametrize("name,data", MODELS, ids=[m[0] for m in MODELS])
def test_read_byte_exact(mounted, name, data):
    d, _ = mounted
    st = os.stat(d.path(name))
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444
    assert st.st_size == len(data)
    with open(d.path(name), "rb") as f:
        assert f.read() == data
    rng = random.Random(name)
    fd = os.open(d.path(name), os.O_RDONLY)
    try:
        for _ in range(50):
            off = rng.randrange(0, len(data) + 2)
            n = rng.randrange(1, 150 * KiB)
            assert os.pread(fd, n, off) == data[off:off + n], (name, off, n)
    finally:
        os.close(fd)
    if data:
        with open(d.path(name), "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            assert m[:] == data


def test_listing(mounted):
    d, _ = mounted
    assert set(os.listdir(d.mnt)) - {".stats", ".metrics", ".control"} == \
        {"encoder.bin", "empty.bin", "tiny", "decoder"}
    assert set(os.listdir(d.path("decoder"))) == {"weights.bin", "config.json"}


def test_stats_models(mounted):
    d, _ = mounted
    s = d.stats()
    assert {n: s["models"][n]["size"] for n, _ in MODELS} == {n: len(b) for n, b in MODELS}


def test_list_and_extract(mounted, tmp_path):
    _, path = mounted
    lst = run_apbundle("list", path, check=True).stdout
    for name, data in MODELS:
        assert any(l.split() and l.split()[0] == name and str(len(data)) in l.split()
                   for l in lst.splitlines()), (name, lst)
    for name, data in MODELS:
        out = tmp_path / (name.replace("/", "_"))
        run_apbundle("extract", path, name, "-o", out, check=True)
        assert out.read_bytes() == data
