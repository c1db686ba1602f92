"""numpy.memmap maps a large float16 array through the mount with a budget
below its size and reads exactly what it reads from the file.

tests/e2e/programs.py writes 24 Mi float16 values (48 MiB: the first half
seeded integers on a 1/256 grid, which zstd compresses, the second half
normal noise, which it barely does) and reads them through numpy.memmap in
a separate process: one value about every page front to back (strided),
256 windows of 4,096 values at seeded random places, and every value in
1 Mi-value blocks from the end to the start; it prints the SHA-256 and the
float64 sum of each. The run on the file and the runs through the mount
(version 2 raw and zstd bundles, max_memory=8M) must print the same. The
array is read by page faults on a shared mapping; the kernel keeps the
pages it faulted in, so the daemon serves the file about once (measured: 48
requests of 1 MiB, the strided pass), through a cache a sixth of its size:
.stats must show evictions and at least the stored bytes read from the
bundle.
"""

import pytest

from conftest import MiB, check_paged, mount, pack, run_program as run, stored_sizes

BUDGET = "8M"


@pytest.fixture(scope="module")
def array(tmp_path_factory):
    path = tmp_path_factory.mktemp("numpy") / "array.f16"
    run("numpy-write", path)
    return path


@pytest.fixture(scope="module")
def native(array):
    got = run("numpy-memmap", array)
    assert got["elements"] == 24 * MiB
    assert got["blocks"]["count"] == 24
    return got


@pytest.mark.timeout_s(300)
@pytest.mark.parametrize("compress", [None, "zstd"], ids=["v2-raw", "v2-zstd"])
def test_memmap_reads_through_a_budget_below_the_array(tmp_path, binaries, array, native,
                                                       compress):
    size = array.stat().st_size
    bundle = pack(tmp_path / "a.apbundle", "array.f16=%s" % array, compress=compress)
    stored = stored_sizes(bundle)["array.f16"]
    if compress == "zstd":
        assert stored < size * 0.9, "the array did not compress: zstd blocks untested"
    with mount(bundle, {"max_memory": BUDGET}) as d:
        got = run("numpy-memmap", d.path("array.f16"))
        st = d.stats()
    assert got == native
    check_paged(st, 8 * MiB, size, stored)
