#!/usr/bin/python3
"""scripts/bench-loop.py - eviction on a layer loop through a real mount, and
every eviction policy and OPT on the reference traces (issue 14). Run as
root from a built tree:

    ninja -C build && /usr/bin/python3 scripts/bench-loop.py   # ~2 min, docs/bench/loop/
    QUICK=1 /usr/bin/python3 scripts/bench-loop.py             # 8 MiB budget
    SMOKE=1 /usr/bin/python3 scripts/bench-loop.py             # tiny: a check that it runs

Part 1, the loop (through the mount; timing is not measured, so the page
cache is left alone). For each ratio (model / budget), each
prefetch (off, on) and each policy (lru, lfu, auto): one incompressible
model of ratio x BUDGET (the same bytes every run) is packed into a version 2
bundle, mounted with max_memory=BUDGET,eviction=POLICY,prefetch=X,trace=FILE,
and read PASSES times start to end with O_DIRECT 1 MiB preads (so every read
reaches the daemon). The mount's .stats give the bundle bytes read and the
bytes served; the daemon's VmHWM is its peak RSS. After unmounting, the
recorded trace is replayed with `apbreplay --prefetch off`: its OPT row is
what Belady's OPT reads on the same demand accesses. saved = 1 - read /
served; the criterion is auto's saved >= 0.9 x OPT's with prefetch off,
0.8 x with prefetch on.

Part 2, the replay table: the reference traces of scripts/tracegen.py (loop
1.25/2/4, zipf, loopzipf, recency, stream; each also with --prefetch on) at
BUDGET, replayed by apbreplay under every policy, OPT and A0 (the best online
policy given each chunk's access count), with the criteria of issue 14
evaluated on them.

Writes OUT/results.md, OUT/results.json, OUT/loop.png, OUT/replay.png.
`scripts/bench-loop.py --replot OUT/results.json` only redraws the plots of a
stored run.

Environment: QUICK=1 (budget 8 MiB), SMOKE=1 (budget 2 MiB, ratio 2 only,
2 passes); BUDGET_MIB (64; QUICK 8; SMOKE 2); PASSES (5; SMOKE 2); RATIOS
(e.g. "1.25 2 4"); RUNS (mounts per loop row, the median shown; 3, QUICK 1);
READ_KIB (the loop's O_DIRECT read size, 1024);
POLICIES ("lru lfu auto"); PARTS ("loop replay");
BENCH_DIR (/var/tmp/apb-bench-loop, -quick / -smoke; removed afterwards);
OUT (docs/bench/loop; QUICK/SMOKE: BENCH_DIR-out); APB_BUILD (build).
"""
import json
import mmap
import os
import random
import shutil
import subprocess
import sys
import time

from benchlib import (log, BUILD, DAEMON, MIB, PACKER, ROOT, close_all,
                      machine_summary, mount_apb, source_tree, start)

SMOKE = os.environ.get("SMOKE") == "1"
QUICK = os.environ.get("QUICK") == "1" or SMOKE
MODE = "SMOKE" if SMOKE else "QUICK" if QUICK else "full"


def env(name, full, quick, smoke):
    return os.environ.get(name) or (smoke if SMOKE else quick if QUICK else full)


BUDGET = int(env("BUDGET_MIB", 64, 8, 2)) * MIB
PASSES = int(env("PASSES", 5, 5, 2))
RUNS = int(env("RUNS", 3, 1, 1))
READ = int(os.environ.get("READ_KIB") or 1024) * 1024  # bytes per pread; a multiple of 4 KiB
RATIOS = [float(r) for r in env("RATIOS", "1.25 2 4", "1.25 2 4", "2").split()]
POLICIES = (os.environ.get("POLICIES") or "lru lfu auto").split()
PARTS = (os.environ.get("PARTS") or "loop replay").split()
PREFETCH = ("off", "on")
BENCH_DIR = os.environ.get("BENCH_DIR", "/var/tmp/apb-bench-loop" +
                           ("-smoke" if SMOKE else "-quick" if QUICK else ""))
OUT = os.environ.get("OUT") or (BENCH_DIR + "-out" if QUICK else
                                os.path.join(ROOT, "docs", "bench", "loop"))
REPLAY = os.path.join(BUILD, "tools", "apbreplay")
TRACEGEN = os.path.join(ROOT, "scripts", "tracegen.py")
RSS_SLACK = 32 * MIB
# issue 14: auto's saved over OPT's saved, by prefetch
LOOP_TARGET = {"off": 0.9, "on": 0.8}
MIX_TARGET = 0.9
HIT_SLACK = 0.02
# apbreplay's reference rows (not policies) as the replay plot shows them
REFERENCE_LABEL = {"OPT": "OPT (best possible)", "A0": "A0 (best online, counts known)"}
REFERENCE_HATCH = {"OPT": "//", "A0": ".."}
# the reference traces: (name, tracegen arguments)
TRACES = [("loop 1.25", ["loop", "--ratio", "1.25"]), ("loop 2", ["loop", "--ratio", "2"]),
          ("loop 4", ["loop", "--ratio", "4"]), ("zipf", ["zipf"]), ("loopzipf", ["loopzipf"]),
          ("recency", ["recency"]), ("stream", ["stream"])]


def replay(trace, prefetch):
    """apbreplay's rows for trace at BUDGET: {policy: row}."""
    r = subprocess.run([REPLAY, "--budget", str(BUDGET), "--json", "--prefetch", prefetch,
                        trace], capture_output=True, text=True, check=True)
    return {p["policy"]: p for p in json.loads(r.stdout)["policies"]}


def columns(reps):
    """The replay table's rows in order: the policies, then OPT and A0."""
    have = reps[0]["policies"]
    return [p for p in have if p not in REFERENCE_LABEL] + [p for p in REFERENCE_LABEL
                                                            if p in have]


def ratio_of(a, b):
    return a / b if b else None


def verdict(ok):
    return "—" if ok is None else "PASS" if ok else "MISS"


def f(v, spec=".3f"):
    return "—" if v is None else format(v, spec)


# ---------------------------------------------------------------- part 1: the loop

def write_model(path, size):
    rng = random.Random(14)  # the same bytes every run
    with open(path, "wb") as out:
        for _ in range(size // MIB):
            out.write(rng.randbytes(MIB))


def read_passes(path, size):
    """PASSES reads of path, start to end, O_DIRECT READ-byte preads: seconds."""
    buf = mmap.mmap(-1, READ)  # page-aligned, as O_DIRECT needs
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        t0 = time.perf_counter()
        for p in range(PASSES):
            off = 0
            while off < size:
                n = os.preadv(fd, [buf], off)
                if n <= 0:
                    raise RuntimeError(f"{path}: short read at {off} in pass {p}")
                off += n
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def mount_run(work, bundle, size, policy, prefetch):
    """One fresh mount read PASSES times, then its trace replayed: a row."""
    mnt, trace = os.path.join(work, "mnt"), os.path.join(work, "loop.trace")
    # no drop_caches: the counts are the daemon's, the reads O_DIRECT
    opts = f"max_memory={BUDGET},eviction={policy},prefetch={prefetch},trace={trace}"
    m = mount_apb(bundle, mnt, opts, logdir=work)
    try:
        secs = read_passes(os.path.join(mnt, "model.bin"), size)
        rss = m.peak_rss()
        st = m.stats()
    finally:
        m.close()
    rep = replay(trace, "off")
    os.unlink(trace)
    opt = rep["OPT"]
    read, served = st["io"]["backing_bytes_read"], st["io"]["bytes_served"]
    if served != PASSES * size:
        raise RuntimeError(f"served {served}, expected {PASSES * size}")
    saved = 1 - read / served
    return {"model_bytes": size, "prefetch": prefetch, "policy": policy, "read": read,
            "served": served, "read_per_served": read / served, "saved": saved,
            "opt_read_per_served": opt["read_per_served"], "opt_saved": opt["saved"],
            "saved_vs_opt": ratio_of(saved, opt["saved"]),
            "hits": st["cache"]["hits"], "misses": st["cache"]["misses"],
            "reuse_hits": st["cache"]["reuse_hits"], "hit_rate": st["cache"]["hit_rate"],
            "prefetch_stats": st["prefetch"], "peak_rss": rss, "seconds": secs,
            "replay_same_policy": rep.get(policy)}


def run_loop(work):
    """RUNS mounts per row; the row is the run of median read/served, with
    every run's saved / OPT saved and the worst peak RSS beside it."""
    rows = []
    for ratio in RATIOS:
        size = int(ratio * BUDGET) // MIB * MIB
        model, bundle = os.path.join(work, "model.bin"), os.path.join(work, "loop.apbundle")
        write_model(model, size)
        subprocess.run([PACKER, "create", bundle, model], check=True, stdout=subprocess.DEVNULL)
        os.unlink(model)
        for prefetch in PREFETCH:
            for policy in POLICIES:
                runs = sorted((mount_run(work, bundle, size, policy, prefetch)
                               for _ in range(RUNS)), key=lambda r: r["read_per_served"])
                row = dict(runs[(len(runs) - 1) // 2], ratio=ratio,
                           runs_saved_vs_opt=[r["saved_vs_opt"] for r in runs],
                           runs_read_per_served=[r["read_per_served"] for r in runs],
                           peak_rss=max(r["peak_rss"] for r in runs))
                row["target"] = LOOP_TARGET[prefetch]
                row["pass"] = (row["saved_vs_opt"] is not None
                               and row["saved_vs_opt"] >= row["target"])
                rows.append(row)
                log(f"loop {ratio}x prefetch={prefetch} {policy}: read/served "
                    f"{row['read_per_served']:.3f} (OPT {row['opt_read_per_served']:.3f}), "
                    f"saved/OPT {f(row['saved_vs_opt'], '.2f')} "
                    f"({spread(row['runs_saved_vs_opt'])}), hit rate {row['hit_rate']:.3f}, "
                    f"peak RSS {row['peak_rss'] / MIB:.1f} MiB")
        os.unlink(bundle)
    return rows


def spread(xs):
    xs = [x for x in xs if x is not None]
    return f"{min(xs):.2f}-{max(xs):.2f}" if xs else "—"


# ---------------------------------------------------------------- part 2: replay

def run_replay(work):
    out = []
    for name, args in TRACES:
        for prefetch in PREFETCH:
            trace = os.path.join(work, "ref.trace")
            subprocess.run([sys.executable, TRACEGEN, *args, "--budget", str(BUDGET),
                            "--prefetch", prefetch, "-o", trace], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            pols = replay(trace, prefetch)
            os.unlink(trace)
            for p in pols.values():
                if p.get("available"):
                    p["hit_rate"] = p["hits"] / p["demand"] if p["demand"] else 0.0
            out.append({"trace": name, "prefetch": prefetch, "policies": pols,
                        "criterion": criterion(name, prefetch, pols)})
    return out


def criterion(name, prefetch, pols):
    """Issue 14's criterion for auto on this trace: (text, value, pass,
    the format of value)."""
    a = pols.get("auto")
    if not a or not a.get("available"):
        return ("auto unavailable", None, False, "")
    if name.startswith("loop"):
        target = MIX_TARGET if name == "loopzipf" else LOOP_TARGET[prefetch]
        v = ratio_of(a["saved"], pols["OPT"]["saved"])
        return (f"auto saved / OPT saved >= {target}", v, v is not None and v >= target, ".2f")
    if name in ("zipf", "recency"):
        best = max(pols[p]["hit_rate"] for p in ("lru", "lfu"))
        v = a["hit_rate"] - best
        return (f"auto hit rate - max(lru, lfu) >= -{HIT_SLACK}", v, v >= -HIT_SLACK, "+.3f")
    if name == "stream":
        v = a["read_per_served"] - pols["lru"]["read_per_served"]
        return ("auto read/served - lru's <= 0", v, v <= 1e-9, "+.3f")
    return ("", None, None, "")


# ---------------------------------------------------------------- report

def report(meta, loop, reps):
    L = ["# Eviction on loops and reference traces (issue 14)", "",
         f"`{meta['command']}`, mode {MODE}{' (tiny sizes: not real numbers)' if SMOKE else ''}; "
         f"{meta['date']}; built from {meta['tree']}; {meta['machine']}. "
         f"Budget (max_memory) {BUDGET // MIB} MiB, 64 KiB chunks.", ""]
    if loop:
        L += ["## Layer loop through the mount", "",
              f"One incompressible model of ratio x budget in a version 2 bundle, read "
              f"{PASSES} times start to end with O_DIRECT {READ // 1024} KiB preads; a fresh mount "
              "per run, "
              f"{RUNS} run(s) per row: the row is the run of median read/served, with the "
              "range of saved / OPT saved over the runs and the worst peak RSS "
              f"(`max_memory={BUDGET // MIB}M,eviction=POLICY,prefetch=X,trace=FILE`, the rest "
              "default). read/served: the mount's `io.backing_bytes_read` / `io.bytes_served` "
              "(bundle bytes read per byte served, lower is better); saved = 1 - read/served. "
              "OPT: Belady's OPT on the same demand accesses (the recorded trace replayed by "
              "`apbreplay --prefetch off`). Target (auto): saved >= 0.9 x OPT's with prefetch "
              "off, 0.8 x with prefetch on; lru and lfu are shown against the same bar. "
              f"Peak RSS: the daemon's VmHWM, against budget + {RSS_SLACK // MIB} MiB.", "",
              "Replayed: the same trace replayed under the row's policy with "
              "`--prefetch off` (what the policy alone does on these demand accesses in "
              "`apbreplay`; with prefetch off it should match the mount's read/served).", "",
              "| ratio | prefetch | policy | read/served | OPT read/served | saved | OPT saved "
              "| saved / OPT saved (runs' range) | target | reuse hits | hit rate | "
              f"replayed read/served | peak RSS MiB | RSS <= budget + {RSS_SLACK // MIB} MiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in loop:
            L.append(f"| {r['ratio']:g}x | {r['prefetch']} | {r['policy']} | "
                     f"{r['read_per_served']:.3f} | {r['opt_read_per_served']:.3f} | "
                     f"{r['saved']:.3f} | {r['opt_saved']:.3f} | {f(r['saved_vs_opt'], '.2f')} "
                     f"({spread(r['runs_saved_vs_opt'])}) | "
                     f"{verdict(r['pass'])} (>= {r['target']}) | {r['reuse_hits']} | "
                     f"{r['hit_rate']:.3f} | "
                     f"{f((r['replay_same_policy'] or {}).get('read_per_served'))} | "
                     f"{r['peak_rss'] / MIB:.1f} | "
                     f"{verdict(r['peak_rss'] <= BUDGET + RSS_SLACK)} |")
        apart = [r for r in loop if r["prefetch"] == "off" and r["replay_same_policy"] and
                 r["read_per_served"] - r["replay_same_policy"]["read_per_served"] > 0.01]
        if apart:
            L += ["", "With prefetch off the mount read more than `apbreplay` replaying its own "
                  "trace under the same policy: " + "; ".join(
                      f"{r['policy']} {r['ratio']:g}x {r['read_per_served']:.3f} against "
                      f"{r['replay_same_policy']['read_per_served']:.3f}" for r in apart) +
                  ". The replay gets one chunk at a time; the daemon loads a miss with the "
                  "chunks after it in the same read (`apb_cache_get_ahead()`, up to 15 more "
                  "for a 1 MiB read), so the policy sees those chunks take slots before "
                  "their gets (docs/TRACES.md, \"How the replay works\"). `READ_KIB=64` "
                  "(one chunk a read, nothing loaded ahead) shows whether that is the gap."]
        L += ["", "Plot: loop.png.", ""]
    if reps:
        pols = columns(reps)
        L += ["## Reference traces replayed (apbreplay)", "",
              f"`scripts/tracegen.py GENERATOR --budget {BUDGET // MIB}M [--prefetch on]` "
              "(docs/TRACES.md), replayed by `apbreplay --budget "
              f"{BUDGET // MIB}M --json` with the trace's prefetch records run when "
              "prefetch is on. Each cell: read/served / hit rate (hits / demand accesses). "
              "OPT never prefetches, nor does A0: the best online policy if accesses were "
              "independent draws, given each chunk's demand count in the trace "
              "(docs/TRACES.md); no criterion, it shows how near to OPT knowing the counts "
              "gets. Criterion (auto): loops saved >= 0.9 x OPT's (0.8 x with "
              "prefetch), loopzipf >= 0.9 x; zipf and recency hit rate within 0.02 of the "
              "better of lru and lfu; stream read/served no more than lru's.", "",
              "| trace | prefetch | " + " | ".join(pols) + " | criterion | value | result |",
              "|---|---|" + "---|" * len(pols) + "---|---|---|"]
        for t in reps:
            cells = []
            for p in pols:
                r = t["policies"].get(p)
                cells.append(f"{r['read_per_served']:.3f} / {r['hit_rate']:.3f}"
                             if r and r.get("available") else "n/a")
            text, v, ok, spec = t["criterion"]
            L.append(f"| {t['trace']} | {t['prefetch']} | " + " | ".join(cells) +
                     f" | {text} | {f(v, spec)} | {verdict(ok)} |")
        L += ["", "Plot: replay.png.", ""]
    with open(os.path.join(OUT, "results.md"), "w") as out:
        out.write("\n".join(L))
    return "\n".join(L)


def plots(loop, reps, meta):
    """loop.png and replay.png: bytes read per byte served (a hit rate would
    count prefetched chunks as saved reads), titled by run, date and
    machine, legends right of the axes, a measured 0 labelled "0" and a
    missing value "n/a"."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    when = f"{meta.get('date', '?')}, {meta.get('machine', '?')}, {meta.get('tree', '?')}"

    def draw(ax, groups, series, title, hatch):
        x = np.arange(len(groups))
        w = 0.8 / len(series)
        for i, (label, vals) in enumerate(series):
            xs = x + i * w - 0.4 + w / 2
            ax.bar(xs, [v or 0 for v in vals], w, label=label, hatch=hatch(label))
            for xi, v in zip(xs, vals):
                if not v:
                    ax.annotate("n/a" if v is None else "0", (xi, 0), xytext=(0, 2),
                                textcoords="offset points", ha="center", va="bottom",
                                fontsize=7, rotation=90 if v is None else 0)
        ax.set_xticks(x)
        ax.set_xticklabels(groups, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("bytes read from the bundle per byte served\n(lower is better)")
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, max([v for _, vals in series for v in vals if v] + [1]) * 1.15)

    if loop:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
        for ax, prefetch in zip(axes, PREFETCH):
            series = [(p, [next((r["read_per_served"] for r in loop if r["ratio"] == q and
                                 r["prefetch"] == prefetch and r["policy"] == p), None)
                           for q in RATIOS]) for p in POLICIES]
            series.append(("OPT (best possible)",
                           [next((r["opt_read_per_served"] for r in loop if r["ratio"] == q and
                                  r["prefetch"] == prefetch), None) for q in RATIOS]))
            draw(ax, [f"model {q:g} x memory budget" for q in RATIOS], series,
                 f"model read {PASSES} times in a loop, prefetch {prefetch}",
                 lambda label: "//" if label.startswith("OPT") else None)
        axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        fig.suptitle(f"Layer loop through the mount, memory budget {BUDGET // MIB} MiB\n{when}",
                     fontsize=11)
        fig.tight_layout()
        fig.savefig(os.path.join(OUT, "loop.png"), dpi=90)
        plt.close(fig)
    if reps:
        pols = columns(reps)
        fig, axes = plt.subplots(1, 2, figsize=(15, 4.8), sharey=True)
        for ax, prefetch in zip(axes, PREFETCH):
            ts = [t for t in reps if t["prefetch"] == prefetch]
            series = [(REFERENCE_LABEL.get(p, p),
                       [t["policies"][p]["read_per_served"]
                        if t["policies"].get(p, {}).get("available") else None for t in ts])
                      for p in pols]
            hatches = {REFERENCE_LABEL.get(p, p): REFERENCE_HATCH.get(p) for p in pols}
            draw(ax, [t["trace"] for t in ts], series, f"reference traces, prefetch {prefetch}",
                 hatches.get)
        axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        fig.suptitle(f"Replayed accesses (apbreplay), memory budget {BUDGET // MIB} MiB\n{when}",
                     fontsize=11)
        fig.tight_layout()
        fig.savefig(os.path.join(OUT, "replay.png"), dpi=90)
        plt.close(fig)


def replot(path):
    """`bench-loop.py --replot OUT/results.json`: redraw a stored run's plots
    next to it, with the run's own budget, passes, ratios and policies."""
    global OUT, BUDGET, PASSES, RATIOS, POLICIES
    with open(path) as f:
        doc = json.load(f)
    meta = doc["meta"]
    OUT = os.path.dirname(os.path.abspath(path))
    BUDGET, PASSES = meta["budget"], meta["passes"]
    RATIOS, POLICIES = meta["ratios"], meta["policies"]
    plots(doc["loop"], doc["replay"], meta)
    print(f"plots of {path} written to {OUT}")
    return 0


# ---------------------------------------------------------------- main

def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--replot":
        return replot(sys.argv[2])
    start(__doc__, "bench-loop", "it mounts", (DAEMON, PACKER, REPLAY))
    t0 = time.monotonic()
    work = os.path.join(BENCH_DIR, "work")
    mnt = os.path.join(work, "mnt")
    if os.path.ismount(mnt):  # left by a killed run
        subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.makedirs(OUT, exist_ok=True)
    try:
        loop = run_loop(work) if "loop" in PARTS else []
        reps = run_replay(work) if "replay" in PARTS else []
    except BaseException:
        log(f"bench-loop: daemon logs kept in {work}")
        raise
    finally:
        close_all()
    shutil.rmtree(work)
    try:
        os.rmdir(BENCH_DIR)
    except OSError:
        pass
    meta = {"command": ("SMOKE=1 " if SMOKE else "QUICK=1 " if QUICK else "")
            + "scripts/bench-loop.py", "mode": MODE, "tree": source_tree(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine_summary(),
            "daemon": DAEMON, "budget": BUDGET, "passes": PASSES, "runs": RUNS,
            "ratios": RATIOS, "policies": POLICIES}
    criteria = []
    for r in loop:
        if r["policy"] == "auto":
            criteria.append({"target": f"loop {r['ratio']:g}x, mount, prefetch {r['prefetch']}: "
                             f"auto saved >= {r['target']} x OPT's", "value": r["saved_vs_opt"],
                             "pass": r["pass"]})
    if loop:
        worst = max(loop, key=lambda r: r["peak_rss"])
        criteria.append({"target": f"loop, mount: daemon peak RSS <= budget + "
                         f"{RSS_SLACK // MIB} MiB (worst row: {worst['policy']} "
                         f"{worst['ratio']:g}x prefetch {worst['prefetch']})",
                         "value": (worst["peak_rss"] - BUDGET) / MIB,
                         "pass": worst["peak_rss"] <= BUDGET + RSS_SLACK})
    for t in reps:
        text, v, ok, _ = t["criterion"]
        criteria.append({"target": f"replay {t['trace']}, prefetch {t['prefetch']}: {text}",
                         "value": v, "pass": ok})
    with open(os.path.join(OUT, "results.json"), "w") as fh:
        json.dump({"meta": meta, "loop": loop, "replay": reps, "criteria": criteria}, fh,
                  indent=1)
    print(report(meta, loop, reps))
    plots(loop, reps, meta)
    print()
    for c in criteria:
        print(f"{verdict(c['pass']):4}  {f(c['value'], '+.3f'):>7}  {c['target']}")
    print(f"\n{OUT}/results.md, {time.monotonic() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
