"""PyTorch loads a state dict through the mount with a budget below its size
and computes exactly what it computes from the file.

tests/e2e/programs.py writes a seeded state dict with torch.save (a
1024-2048-1024-1024 MLP, 20,989,655 bytes: its first layer normal floats,
which zstd barely compresses, the rest 129 distinct values a layer, which it
does) and
the same weights as one raw float32 file. In separate processes, one thread
each, it then
- torch.load()s the state dict (a zip archive read with seeks and reads
  through a Python file object) into the model and runs a forward pass on a
  seeded batch: the SHA-256 of the output bytes and of every weight;
- maps the raw file with torch.from_file (a private mmap; the weights are
  views of the mapping, so the forward pass reads them by page faults);
- torch.load(..., mmap=True), where this torch has it (2.1 and later).
Each runs once on the file and once per bundle (version 2 raw and zstd)
mounted with max_memory=16M, a few MiB below the model: the JSON must be
equal, and .stats must show evictions and every stored byte read.

python3-torch is installed by scripts/test.sh; without it these tests skip.
"""

import importlib.util

import pytest

from conftest import MiB, check_paged, mount, pack, run_program as run, stored_sizes

BUDGET = "16M"


@pytest.fixture(scope="module")
def torch():
    """torch's version and whether its torch.load has mmap= (asked in a
    child: importing torch here would put its threads in every test)."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("python3-torch is not installed (scripts/test.sh installs it)")
    return run("torch-info")


@pytest.fixture(scope="module")
def files(tmp_path_factory, torch):
    d = tmp_path_factory.mktemp("torch")
    run("torch-write", d / "model.pt")
    run("torch-write-raw", d / "weights.f32")
    return {"model.pt": d / "model.pt", "weights.f32": d / "weights.f32"}


@pytest.fixture(scope="module")
def native(files):
    return {"load": run("torch-forward", files["model.pt"]),
            "from_file": run("torch-from-file", files["weights.f32"])}


def test_both_ways_compute_the_same(native):
    # the two loaders agree on the file: from_file maps the weights torch.load read
    assert native["load"] == native["from_file"]
    assert native["load"]["output"]["shape"] == [8, 1024]


@pytest.mark.timeout_s(300)
@pytest.mark.parametrize("compress", [None, "zstd"], ids=["v2-raw", "v2-zstd"])
def test_torch_load_through_a_budget_below_the_model(tmp_path, binaries, files, native,
                                                    compress):
    size = files["model.pt"].stat().st_size
    bundle = pack(tmp_path / "m.apbundle", "model.pt=%s" % files["model.pt"], compress=compress)
    stored = stored_sizes(bundle)["model.pt"]
    if compress == "zstd":
        assert stored < size * 0.9, "the state dict did not compress: zstd blocks untested"
    with mount(bundle, {"max_memory": BUDGET}) as d:
        got = run("torch-forward", d.path("model.pt"))
        st = d.stats()
    assert got == native["load"]
    check_paged(st, 16 * MiB, size, stored)


@pytest.mark.timeout_s(300)
@pytest.mark.parametrize("compress", [None, "zstd"], ids=["v2-raw", "v2-zstd"])
def test_torch_from_file_maps_the_mount(tmp_path, binaries, files, native, compress):
    size = files["weights.f32"].stat().st_size
    bundle = pack(tmp_path / "w.apbundle", "weights.f32=%s" % files["weights.f32"],
                  compress=compress)
    stored = stored_sizes(bundle)["weights.f32"]
    with mount(bundle, {"max_memory": BUDGET}) as d:
        got = run("torch-from-file", d.path("weights.f32"))
        st = d.stats()
    assert got == native["from_file"]
    check_paged(st, 16 * MiB, size, stored)


@pytest.mark.timeout_s(300)
@pytest.mark.parametrize("compress", [None, "zstd"], ids=["v2-raw", "v2-zstd"])
def test_torch_load_mmap_through_a_budget_below_the_model(tmp_path, binaries, torch, files,
                                                         native, compress):
    if not torch["load_mmap"]:
        pytest.skip("torch %s has no torch.load(mmap=True) (added in PyTorch 2.1; Debian 12's "
                    "python3-torch is 1.13): test_torch_from_file_maps_the_mount maps the "
                    "weights instead" % torch["version"])
    size = files["model.pt"].stat().st_size
    bundle = pack(tmp_path / "m.apbundle", "model.pt=%s" % files["model.pt"], compress=compress)
    stored = stored_sizes(bundle)["model.pt"]
    assert run("torch-forward", files["model.pt"], "--mmap") == native["load"]
    with mount(bundle, {"max_memory": BUDGET}) as d:
        got = run("torch-forward", d.path("model.pt"), "--mmap")
        st = d.stats()
    assert got == native["load"]
    check_paged(st, 16 * MiB, size, stored)
