"""scripts/benchplot.py - the plots of scripts/bench, from its results.json.

scripts/bench calls plot_all() after a run; `scripts/bench --replot
OUT/results.json` calls it on a stored run, without measuring anything.
Every figure is meant to be read at a glance:
  - titled by what it measured and on which disk and date (meta.data_on,
    meta.date, the commit), so runs on different disks are not confused;
  - cold and hot reads on separate axes (hot is up to 10x faster: on one
    axis it squashed the cold bars);
  - a bar of 0 says "0" above it and a missing value says "n/a", so no
    value never looks like a tiny one;
  - legends outside the axes, where they cover no bar;
  - the abbreviations of system names explained under every figure;
  - the scan plot shows bundle bytes read per byte served when the run
    recorded it: prefetched chunks count as hits, so a hit rate near 1
    there does not mean the cache saved reads.
"""
import os

from benchlib import median

# What the short names of the systems mean (docs/PERFORMANCE.md).
ABBREVIATIONS = (
    "kc = mounted with -o kernel_cache (the kernel's page cache keeps file pages across opens); "
    "v1, v2, v2zstd = bundle format 1, 2, 2 with zstd blocks; "
    "buffered = -o backing_io=buffered (bundle read through the page cache); "
    "ceiling = a FUSE file system that only copies bytes (the FUSE limit); "
    "squashfuse_ll = squashfuse's low-level binary; none/zstd = squashfs compression")


def subtitle(meta):
    """'disk /dev/vda ext4, 2026-12-04 15:41 UTC, commit 2c3c1a5, AMD EPYC, 2 cores'."""
    parts = [f"disk {meta.get('data_on', '?')}", meta.get("date", "date unknown")]
    if meta.get("commit"):
        parts.append(f"commit {meta['commit']}")
    if meta.get("cpu"):
        parts.append(f"{meta['cpu']}, {meta.get('cores', '?')} cores")
    return ", ".join(parts)


class Results:
    """results.json's rows as {(case, system): {key: [values]}}."""

    def __init__(self, doc):
        self.doc = doc
        self.meta = doc.get("meta", {})
        self.mode = doc.get("mode", {})
        self.rows = {(r["case"], r["system"]): {k: v for k, v in r.items()
                                                if k not in ("case", "system")}
                     for r in doc.get("rows", [])}
        unavailable = doc.get("unavailable", {})
        seen = []
        for _, s in self.rows:
            if s not in seen and s not in unavailable:
                seen.append(s)
        self.systems = seen

    def med(self, case, system, key):
        row = self.rows.get((case, system))
        return median(row.get(key, [])) if row else None


def bars(ax, groups, series, title, ylabel, log=False):
    """Grouped bars; 0 labelled "0", None labelled "n/a"; legend outside
    on the right."""
    import numpy as np
    x = np.arange(len(groups))
    w = 0.8 / max(1, len(series))
    for i, (label, vals) in enumerate(series):
        xs = x + i * w - 0.4 + w / 2
        heights = [v if v else 0 for v in vals]
        ax.bar(xs, heights, w, label=label)
        for xi, v in zip(xs, vals):
            if v is None or v == 0:
                # On a log axis a 0 bar has no height: the label sits at
                # the bottom of the axis.
                ax.annotate("n/a" if v is None else "0", (xi, 0), xycoords=("data", "axes fraction"),
                            xytext=(0, 2), textcoords="offset points", ha="center",
                            va="bottom", fontsize=8, rotation=0 if v == 0 else 90,
                            gid="zero-label")
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=35, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(axis="y", alpha=0.3)
    if log:
        ax.set_yscale("log")


def figure(plt, title, meta, rows, cols, size):
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    fig.suptitle(f"{title}\n{subtitle(meta)}", fontsize=11)
    fig.text(0.01, 0.005, "\n".join(wrap(ABBREVIATIONS, 170)), fontsize=7, va="bottom",
             gid="abbreviations")
    return fig, axes


def wrap(text, width):
    import textwrap
    return textwrap.wrap(text, width)


def save(plt, fig, out, name):
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(os.path.join(out, name), dpi=90)
    plt.close(fig)


def plot_seq(plt, r, run):
    m = r.mode
    fig, axes = figure(plt, "Sequential 1 MiB reads: MB/s, median of runs", r.meta, 2, 2, (14, 9))
    for col, (key, label) in enumerate((("big", f"{m.get('model_mib', '?')} MiB incompressible"),
                                        ("comp", f"{m.get('comp_mib', '?')} MiB compressible"))):
        for row, temp in enumerate(("cold", "hot")):
            bars(axes[row][col], run, [(temp, [r.med(f"seq {temp} {key}", n, "mbps") for n in run])],
                 f"{temp}: {label} model" + (" (page cache dropped)" if temp == "cold"
                                              else " (second read)"), "MB/s")
    return fig


def plot_fio(plt, r, run):
    cases = sorted({c for c, _ in r.rows if c.startswith("rand4k ")})
    fig, axes = figure(plt, "Random 4 KiB reads (fio)", r.meta, 1, 2, (15, 5.5))
    bars(axes[0][0], run, [(c[7:], [r.med(c, n, "iops") for n in run]) for c in cases],
         "IOPS by read mode and jobs (j)", "IOPS (log scale)", log=True)
    k = "rand4k direct 2j"
    bars(axes[0][1], run, [("p50", [r.med(k, n, "p50_us") for n in run]),
                           ("p99", [r.med(k, n, "p99_us") for n in run])],
         "O_DIRECT, 2 jobs: latency", "µs (log scale)", log=True)
    return fig


def plot_tree(plt, r, run):
    tree = [n for n in run if ("tree", n) in r.rows]
    fig, axes = figure(plt, f"{r.mode.get('small_count', '?')} small models: mount and ls -lR",
                       r.meta, 1, 2, (14, 5))
    bars(axes[0][0], tree, [("mount", [None if r.med("tree", n, "mount_s") is None
                                       else r.med("tree", n, "mount_s") * 1e3 for n in tree])],
         "mount (native: none)", "ms")
    bars(axes[0][1], tree, [("ls -lR", [r.med("tree", n, "ls_s") * 1e3 for n in tree])],
         "ls -lR after dropping the page cache", "ms")
    return fig


def plot_scan(plt, r):
    scans = sorted(k for k in r.rows if k[0].startswith("scan "))
    if not scans:
        return None
    labels = [f"{n} {c[5:]}" for c, n in scans]
    per_byte = [r.med(c, n, "read_per_served") for c, n in scans]
    if any(v is not None for v in per_byte):
        fig, axes = figure(plt, "Cyclic scan of a model twice the budget", r.meta, 1, 2, (15, 5.5))
        bars(axes[0][1], labels, [("bundle bytes read per byte served", per_byte)],
             "bundle bytes read per byte served (below 1: the cache saved reads)", "bytes/byte")
        ax = axes[0][0]
    else:
        fig, axes = figure(plt, "Cyclic scan of a model twice the budget", r.meta, 1, 1, (9, 5.5))
        ax = axes[0][0]
    bars(ax, labels, [("hit rate", [r.med(c, n, "hit_rate") for c, n in scans])],
         "hit rate: prefetched chunks count as hits,\nso near 1 with prefetch=on saves no read",
         "hit rate")
    ax.set_ylim(0, 1.05)
    return fig


def plot_all(out, doc):
    """Write seq.png, fio.png, tree.png and scan.png for results.json doc
    into out. Returns the names written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    r = Results(doc)
    run = r.systems
    written = []
    for name, fig in (("seq.png", plot_seq(plt, r, run)), ("fio.png", plot_fio(plt, r, run)),
                      ("tree.png", plot_tree(plt, r, run)), ("scan.png", plot_scan(plt, r))):
        if fig is not None:
            save(plt, fig, out, name)
            written.append(name)
    return written
