"""llama.cpp reads a GGUF through the mount with a budget below its size and
generates exactly the tokens it generates from the file itself.

scripts/gguf-llama.py writes a 25 MiB llama model with random f16 weights;
scripts/llama/generate.mjs (node-llama-cpp 3.21.1, CPU, mmap) greedily
generates TOKENS tokens from it, once from the file and once per bundle
(version 2 raw and zstd) and eviction policy mounted with max_memory=8M.
Greedy decoding is deterministic, and a wrong byte anywhere in a weight
changes the logits, so the token lists must be equal; .stats must show
evictions and at least the model's stored bytes read from the bundle (it was
paged through the small cache, not held whole).

node-llama-cpp is installed by scripts/test.sh (scripts/deps.sh
install_llama); without it these tests skip.
"""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, MiB, check_paged, mount, pack, stored_sizes

LLAMA = REPO / "scripts" / "llama"
TOKENS = 16
BUDGET = "8M"
# 4 layers, n_embd 512, n_ff 1408: 26,396,832 bytes, three times the budget
MODEL_ARGS = ["--layers", "4", "--embd", "512", "--ff", "1408", "--seed", "1"]


def generate(path, stats=None):
    """generate.mjs's JSON for the model at path (reading .stats at stats)."""
    cmd = ["node", str(LLAMA / "generate.mjs"), str(path), "--tokens", str(TOKENS),
           "--threads", "2"]
    if stats is not None:
        cmd += ["--stats", str(stats)]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=120)
    assert p.returncode == 0, "generate.mjs %s failed (%d):\n%s" % (path, p.returncode, p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    if shutil.which("node") is None:
        pytest.skip("node is not installed (scripts/deps.sh install_llama installs it)")
    if not (LLAMA / "node_modules" / "node-llama-cpp" / "package.json").is_file():
        pytest.skip("node-llama-cpp is not installed in scripts/llama "
                    "(run: . scripts/deps.sh && install_llama)")
    path = tmp_path_factory.mktemp("llama") / "model.gguf"
    subprocess.run([sys.executable, str(REPO / "scripts" / "gguf-llama.py")] + MODEL_ARGS
                   + [str(path)], check=True, stdout=subprocess.DEVNULL, timeout=60)
    return path


@pytest.fixture(scope="module")
def native(model):
    got = generate(model)
    assert len(got["tokens"]) == TOKENS
    # a model that repeats one token would make the comparison weak
    assert len(set(got["tokens"])) > TOKENS // 4, got["tokens"]
    return got


@pytest.mark.parametrize("compress", [None, "zstd"], ids=["v2-raw", "v2-zstd"])
@pytest.mark.parametrize("eviction", ["lru", "auto"])
def test_same_tokens_through_a_budget_below_the_model(tmp_path, model, native, eviction,
                                                      compress):
    size = model.stat().st_size
    bundle = pack(tmp_path / "m.apbundle", "model.gguf=%s" % model, compress=compress)
    stored = stored_sizes(bundle)["model.gguf"]
    if compress == "zstd":
        # f16 weights compress by about 8%: every block goes through zstd
        assert stored < size, "the model did not compress: zstd blocks untested"
    with mount(bundle, {"max_memory": BUDGET, "eviction": eviction}) as d:
        got = generate(d.path("model.gguf"), stats=d.path(".stats"))
        st = d.stats()
    assert got["variant"] == native["variant"]
    assert got["tokens"] == native["tokens"]
    assert st["cache"]["policy"] == eviction
    check_paged(st, 8 * MiB, size, stored)
