"""The benchmark plots (scripts/benchplot.py) read at a glance: titled by
disk and date, cold and hot on separate axes, 0 and missing values
labelled, legends outside the axes, abbreviations explained, bytes read
per byte served next to the hit rate when recorded; `scripts/bench
--replot results.json` redraws a stored run without measuring."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
matplotlib = pytest.importorskip("matplotlib")  # installed by scripts/test.sh
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import benchplot  # noqa: E402

META = {"data_on": "/dev/vdz ext4", "date": "2026-12-01 10:00 UTC", "commit": "abc1234",
        "cpu": "CPU", "cores": 2}
SYSTEMS = ["native", "apbundlefs v2", "apbundlefs v2 kc"]


def doc():
    rows = []
    for i, s in enumerate(SYSTEMS):
        for temp, f in (("cold", 1), ("hot", 10)):
            for key in ("big", "comp"):
                rows.append({"case": f"seq {temp} {key}", "system": s,
                             "mbps": [0.0 if (s, temp) == ("apbundlefs v2", "cold") else 100.0 * f * (i + 1)]})
        for c in ("rand4k buffered 1j", "rand4k direct 2j"):
            rows.append({"case": c, "system": s, "iops": [1000.0 * (i + 1)],
                         "p50_us": [10.0], "p99_us": [50.0]})
        rows.append({"case": "tree", "system": s, "ls_s": [0.1],
                     **({} if s == "native" else {"mount_s": [0.05]})})
        if s != "native":
            rows.append({"case": "scan lru prefetch=on", "system": s, "hit_rate": [0.99],
                         "read_per_served": [1.0]})
            rows.append({"case": "scan lru prefetch=off", "system": s, "hit_rate": [0],
                         "read_per_served": [1.0]})
    return {"meta": META, "mode": {"model_mib": 64, "comp_mib": 32, "small_count": 100},
            "unavailable": {}, "rows": rows}


def labels(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == "zero-label"]


def check_common(fig):
    assert fig._suptitle.get_text().endswith(
        "\ndisk /dev/vdz ext4, 2026-12-01 10:00 UTC, commit abc1234, CPU, 2 cores")
    (abbr,) = [t for t in fig.texts if t.get_gid() == "abbreviations"]
    assert "kc = mounted with -o kernel_cache" in abbr.get_text()
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is not None:  # right of the axes: it covers no bar
            assert leg.get_window_extent(r).x0 >= ax.get_window_extent(r).x1


@pytest.fixture(autouse=True)
def close_figures():
    """Every figure a test made is closed after it, passed or failed."""
    yield
    plt.close("all")


def test_seq_cold_and_hot_on_separate_axes_zero_labelled():
    r = benchplot.Results(doc())
    fig = benchplot.plot_seq(plt, r, r.systems)
    check_common(fig)
    titles = [ax.get_title() for ax in fig.axes]
    assert [t.split(":")[0] for t in titles] == ["cold", "cold", "hot", "hot"]
    # apbundlefs v2 cold is 0 in both models: labelled, not an empty slot.
    assert labels(fig) == ["0", "0"]
    # Each axis scales to its own data: hot is 10x cold.
    assert fig.axes[2].get_ylim()[1] > 5 * fig.axes[0].get_ylim()[1]


def test_missing_values_say_na():
    r = benchplot.Results(doc())
    fig = benchplot.plot_tree(plt, r, r.systems)
    check_common(fig)
    assert labels(fig) == ["n/a"]  # native has no mount time


def test_fio_legend_outside():
    r = benchplot.Results(doc())
    fig = benchplot.plot_fio(plt, r, r.systems)
    check_common(fig)
    assert all(ax.get_legend() is not None for ax in fig.axes)


def test_scan_shows_bytes_read_per_byte_served():
    r = benchplot.Results(doc())
    fig = benchplot.plot_scan(plt, r)
    check_common(fig)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("hit rate: prefetched chunks count as hits")
    assert titles[1].startswith("bundle bytes read per byte served")
    assert labels(fig) == ["0", "0"]  # the prefetch=off hit rates


def test_replot_a_stored_run(tmp_path):
    shutil.copy(REPO / "docs" / "bench" / "results.json", tmp_path / "results.json")
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "bench"), "--replot",
                        str(tmp_path / "results.json")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for name in ("seq.png", "fio.png", "tree.png", "scan.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["data_on"]


@pytest.mark.parametrize("script,run,names", [
    ("bench-loop.py", "loop", ("loop.png", "replay.png")),
    ("bench-llama.py", "llama", ("llama.png",)),
])
def test_replot_other_benchmarks(tmp_path, script, run, names):
    shutil.copy(REPO / "docs" / "bench" / run / "results.json", tmp_path / "results.json")
    p = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--replot",
                        str(tmp_path / "results.json")], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stderr
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
