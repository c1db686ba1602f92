#!/usr/bin/python3
"""scripts/bench-llama.py - llama.cpp generating from a model about twice the
memory it may use, read natively and through apbundlefs, at equal total
memory. Run as root from a built tree (ninja -C build):

    /usr/bin/python3 scripts/bench-llama.py            # ~785 MiB model, ~530 MiB in all
    QUICK=1 /usr/bin/python3 scripts/bench-llama.py    # ~98 MiB model, a smoke run

scripts/gguf-llama.py writes the model (random f16 weights, kept under
BENCH_DIR between runs); it and a version 2 bundle of it go on a RAM disk
whose reads are limited to DISK_MBPS (benchlib.RamDisk), and the page cache
is dropped before every run. scripts/llama/generate.mjs (node-llama-cpp,
mmap) greedily generates WARMUP + TOKENS tokens; the load and the WARMUP
tokens are left out of the per-token numbers. Rows:

  native, no limit   the model file, reader unlimited: how much memory llama
                     needs beyond the mapped model (its peak RSS, VmHWM,
                     minus the model's resident mapping), READER below
  native             the model file, the reader's memory cgroup holds TOTAL
  apbundlefs POLICY  the bundle mounted with eviction=POLICY; the reader's
                     cgroup holds READER, the daemon's the rest of TOTAL,
                     of which max_memory is all but DAEMON_OVERHEAD

so that neither the page cache nor the daemon can hold the model. Bytes read
per token: the reader's /proc/PID/io read_bytes for native, the mount's
.stats io.backing_bytes_read for apbundlefs. A POLICY the daemon refuses
is reported as unavailable. Every run must give the same token ids.

Environment: QUICK=1; LAYERS, EMBD, FF (model; default 32, 1024, 2816;
QUICK 16, 512, 1408); TOTAL_MIB (default: what llama.cpp needs beyond
the mapped model, measured, plus half the model - the model is twice the
memory available for it; QUICK: READER + a third of the model); READER_MIB (default: measured + 32); POLICIES (default
"lru auto"); PREFETCH (the daemon's prefetch=, default on); TRACE=DIR
(each mount records its chunk accesses in DIR/POLICY.trace, the last run's
kept, and the report shows them replayed by apbreplay); TOKENS (measured tokens, 24; QUICK 8); WARMUP (1);
THREADS (2); RUNS (runs per row, medians; 3, QUICK 1); DISK_MBPS (500, a
SATA-class disk: reading the model is what a token costs; 1500 makes 2
cores the limit; 0: no limit); BENCH_DIR
(/var/tmp/apb-bench-llama, -quick for QUICK); OUT (docs/bench/llama;
QUICK: BENCH_DIR/out); APB_BUILD (build).
Writes OUT/results.md, OUT/results.json, OUT/llama.png.
`scripts/bench-llama.py --replot OUT/results.json` only redraws the plot of
a stored run.
"""
import json
import os
import subprocess
import sys
import time

from benchlib import (log, BUILD, MIB, PACKER, DAEMON, ROOT, MemCgroup, Mount, RamDisk,
                      close_all, drop_caches, machine_summary,
                      source_tree, start)

QUICK = os.environ.get("QUICK") == "1"


def env_int(name, full, quick):
    v = os.environ.get(name)
    return int(v) if v else quick if QUICK else full


LAYERS = env_int("LAYERS", 32, 16)
EMBD = env_int("EMBD", 1024, 512)
FF = env_int("FF", 2816, 1408)
TOKENS = env_int("TOKENS", 24, 8)
WARMUP = env_int("WARMUP", 1, 1)
THREADS = env_int("THREADS", 2, 2)
RUNS = env_int("RUNS", 3, 1)
DISK_MBPS = env_int("DISK_MBPS", 500, 1500)
POLICIES = os.environ.get("POLICIES", "lru auto").split()
PREFETCH = os.environ.get("PREFETCH", "on")
TRACE = os.environ.get("TRACE")
DAEMON_OVERHEAD = 16 * MIB   # the daemon's RSS beyond max_memory (README)
READER_MARGIN = 32 * MIB
BENCH_DIR = os.environ.get("BENCH_DIR", "/var/tmp/apb-bench-llama" + ("-quick" if QUICK else ""))
OUT = os.environ.get("OUT") or (os.path.join(BENCH_DIR, "out") if QUICK else
                                os.path.join(ROOT, "docs", "bench", "llama"))
LLAMA = os.path.join(ROOT, "scripts", "llama")


def cleanup():
    """Mounts first (their daemons live in a cgroup), then cgroups, then the
    RAM disk: benchlib.close_all()."""
    close_all()


# ---------------------------------------------------------------- runs

def generate(cg, model, stats=None):
    """generate.mjs's JSON for model, run inside cgroup cg; None if it was
    killed (the cgroup's OOM killer)."""
    cmd = ["node", os.path.join(LLAMA, "generate.mjs"), model, "--tokens", str(WARMUP + TOKENS),
           "--warmup", str(WARMUP), "--threads", str(THREADS)]
    if stats:
        cmd += ["--stats", stats]
    p = subprocess.run(cg.argv(cmd), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=3600)
    if p.returncode < 0 or p.returncode == 137:
        log(f"  reader killed (signal {-p.returncode if p.returncode < 0 else 9})")
        return None
    if p.returncode != 0:
        raise RuntimeError(f"generate.mjs {model} failed ({p.returncode}):\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_native(model, limit, io_max):
    drop_caches()
    cg = MemCgroup("apb-llama-reader", limit, io_max)
    try:
        r = generate(cg, model)
        peak = cg.peak()
    finally:
        cg.close()
    if r:
        r.update(reader_peak=peak, bytes_per_token=r["measured_read_bytes"] / r["measured"])
    return r


def trace_path(policy):
    """Where the mounts of policy record their accesses (TRACE set)."""
    return os.path.abspath(os.path.join(TRACE, policy + ".trace"))


def replay(policy, max_memory):
    """apbreplay's table for the trace of policy's last run, at its budget."""
    return subprocess.run([os.path.join(BUILD, "tools", "apbreplay"), "--budget",
                           f"{max_memory // 1024}K", trace_path(policy)],
                          capture_output=True, text=True, check=True).stdout.strip()


def run_mount(bundle, mnt, policy, reader, daemon_limit, io_max):
    drop_caches()
    max_memory = daemon_limit - DAEMON_OVERHEAD
    dcg = MemCgroup("apb-llama-daemon", daemon_limit, io_max)
    rcg = MemCgroup("apb-llama-reader", reader, io_max)
    try:
        opts = f"max_memory={max_memory // 1024}K,eviction={policy},prefetch={PREFETCH}"
        if TRACE:
            opts += f",trace={trace_path(policy)}"
        with Mount(dcg.argv([DAEMON, "-f", "-o", opts, bundle, mnt]), mnt,
                   logdir=BENCH_DIR) as m:
            r = generate(rcg, os.path.join(mnt, "model.gguf"), os.path.join(mnt, ".stats"))
            st = m.stats()
            daemon_rss = m.peak_rss()
        reader_peak, daemon_peak = rcg.peak(), dcg.peak()
    finally:
        rcg.close()
        dcg.close()
    if r:
        r.update(reader_peak=reader_peak, daemon_peak=daemon_peak, daemon_hwm=daemon_rss,
                 max_memory=max_memory, stats=st,
                 bytes_per_token=r["measured_backing_bytes"] / r["measured"])
    return r


def median_run(runs):
    """The run with the median tokens/s (None if any run was killed)."""
    if any(r is None for r in runs):
        return None
    runs = sorted(runs, key=lambda r: r["tokens_per_s"])
    best = dict(runs[len(runs) // 2])
    best["tokens_per_s_runs"] = [r["tokens_per_s"] for r in runs]
    return best


# ---------------------------------------------------------------- report

def write_report(meta, rows):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    model = meta["model_bytes"]
    lines = [
        "# llama.cpp on a model larger than memory",
        "",
        f"`{meta['command']}` on {meta['date']}, built from {meta['tree']}, "
        f"daemon {meta['daemon']}: {meta['machine']}.",
        f"Model: {meta['model']}, {model / MIB:.0f} MiB; bundle: version 2, no compression.",
        f"Total memory for the reader and the daemon: {meta['total'] / MIB:.0f} MiB; "
        f"the reader alone needs {meta['need'] / MIB:.0f} MiB beyond the mapped model, "
        f"its cgroup gets {meta['reader'] / MIB:.0f} MiB beside a daemon.",
        f"Disk: {meta['disk']}. ggml CPU variant: {meta['variant']}; {THREADS} threads; "
        f"{WARMUP} warm-up + {TOKENS} measured tokens, greedy; median of {RUNS} run(s). "
        "Load average at the end (the machine may be shared): "
        + ", ".join(f"{x:.1f}" for x in meta["loadavg"]) + ".",
        "",
        "| system | reader cgroup MiB | daemon cgroup MiB (max_memory) | load s | tokens/s "
        "| MiB read per token | of the model | same tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        r = row["result"]
        if r is None:
            lines.append(f"| {row['system']} | | | {row.get('unavailable', 'killed (OOM)')} "
                         "| | | | |")
            continue
        dmn = (f"{row['daemon_limit'] / MIB:.0f} ({r['max_memory'] / MIB:.0f})"
               if "max_memory" in r else "-")
        reader = "none" if row["reader_limit"] is None else f"{row['reader_limit'] / MIB:.0f}"
        lines.append(f"| {row['system']} | {reader} | {dmn} | {r['load_s']:.2f} "
                     f"| {r['tokens_per_s']:.2f} | {r['bytes_per_token'] / MIB:.0f} "
                     f"| {r['bytes_per_token'] / model:.2f} "
                     f"| {'yes' if r['tokens'] == meta['tokens'] else 'NO'} |")
    lines += ["", "MiB read per token: the reader's read_bytes (/proc/PID/io) for native, "
              "the mount's io.backing_bytes_read for apbundlefs, over the measured tokens.",
              "", "Memory peaks (MiB): each cgroup's peak usage (page cache included) "
              "and the daemon's VmHWM.", "",
              "| system | reader cgroup | daemon cgroup | daemon VmHWM |", "|---|---|---|---|"]
    for row in rows:
        r = row["result"]
        if r:
            lines.append(f"| {row['system']} | {r['reader_peak'] / MIB:.0f} | "
                         + " | ".join(f"{r[k] / MIB:.0f}" if k in r else "-"
                                      for k in ("daemon_peak", "daemon_hwm")) + " |")
    lines.append("")
    for row in rows:
        if row.get("replay"):
            lines += [f"{row['system']}'s trace (load, warm-up and measured tokens of its "
                      "last run) replayed by `apbreplay` at its max_memory:", "",
                      "```", row["replay"], "```", ""]
    with open(os.path.join(OUT, "results.md"), "w") as f:
        f.write("\n".join(lines))
    plot(meta, rows)


def plot(meta, rows):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("no matplotlib: no plot")
        return
    done = [r for r in rows if r["result"] and r["reader_limit"]]  # at equal memory
    names = [r["system"] for r in done]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    bars = a.barh(names, [r["result"]["tokens_per_s"] for r in done])
    a.bar_label(bars, fmt="%.2f")
    a.set_xlabel("tokens/s")
    bars = b.barh(names, [r["result"]["bytes_per_token"] / MIB for r in done])
    b.bar_label(bars, fmt="%.0f")
    b.set_xlabel("MiB read from disk per token")
    b.set_yticks([])
    for ax in (a, b):
        ax.invert_yaxis()
        ax.margins(x=0.15)
    fig.suptitle(f"llama.cpp, {meta['model_bytes'] / MIB:.0f} MiB model, "
                 f"{meta['total'] / MIB:.0f} MiB in all\n"
                 f"disk {meta.get('disk', '?')}\n{meta.get('date', '?')}, "
                 f"{meta.get('machine', '?')}, {meta.get('tree', '?')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "llama.png"), dpi=110)


# ---------------------------------------------------------------- main

def replot(path):
    """`bench-llama.py --replot OUT/results.json`: redraw a stored run's plot
    next to it, without measuring."""
    global OUT
    with open(path) as f:
        doc = json.load(f)
    OUT = os.path.dirname(os.path.abspath(path))
    plot(doc["meta"], doc["rows"])
    print(f"plot of {path} written to {OUT}")
    return 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--replot":
        return replot(sys.argv[2])
    start(__doc__, "bench-llama", "memory cgroups, drop_caches, mounts", (DAEMON, PACKER))
    t0 = time.monotonic()
    subprocess.run(["bash", "-c", ". scripts/deps.sh && install_llama"], cwd=ROOT, check=True)
    os.makedirs(BENCH_DIR, exist_ok=True)
    name = f"llama-{LAYERS}x{EMBD}x{FF}.gguf"
    src = os.path.join(BENCH_DIR, name)
    if not os.path.exists(src):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gguf-llama.py"),
                        "--layers", str(LAYERS), "--embd", str(EMBD), "--ff", str(FF),
                        src + ".tmp"], check=True)
        os.rename(src + ".tmp", src)
    size = os.path.getsize(src)
    ram = RamDisk(os.path.join(BENCH_DIR, "ram"), 2 * size)
    model = os.path.join(ram.mnt, name)
    bundle = os.path.join(ram.mnt, "model.apbundle")
    subprocess.run(["cp", src, model], check=True)
    subprocess.run([PACKER, "create", bundle, f"model.gguf={model}"], check=True,
                   stdout=subprocess.DEVNULL)
    io_max = None
    if DISK_MBPS:
        ram.limit(DISK_MBPS)
        io_max = f"{ram.dev} rbps={DISK_MBPS * 1000000}"
    mnt = os.path.join(BENCH_DIR, "mnt")
    os.makedirs(mnt, exist_ok=True)
    if TRACE:
        os.makedirs(TRACE, exist_ok=True)

    log(f"model {size / MIB:.0f} MiB; native run without a memory limit")
    free = median_run([run_native(model, None, io_max) for _ in range(RUNS)])
    if free is None:
        raise RuntimeError("the unlimited native run was killed")
    need = -(-(free["vm_hwm"] - free["model_rss"]) // MIB) * MIB
    reader = int(os.environ.get("READER_MIB") or 0) * MIB or need + READER_MARGIN
    # The model about twice the memory available for it: what llama.cpp
    # needs of its own (need) plus half the model, for native and mounted
    # alike.
    total = int(os.environ.get("TOTAL_MIB") or 0) * MIB or (
        reader + size // 3 // MIB * MIB if QUICK else need + size // 2 // MIB * MIB)
    if total - reader < 2 * DAEMON_OVERHEAD:
        sys.exit(f"bench-llama: TOTAL_MIB {total // MIB} leaves no room for a daemon beside "
                 f"a {reader // MIB} MiB reader")
    rows = [{"system": "native, no limit", "reader_limit": None, "result": free}]
    mounted = "apbundlefs" + ("" if PREFETCH == "on" else f" prefetch={PREFETCH}")
    log(f"reader needs {need / MIB:.0f} MiB; total {total / MIB:.0f} MiB")
    log(f"native, reader cgroup {total / MIB:.0f} MiB")
    rows.append({"system": "native", "reader_limit": total,
                 "result": median_run([run_native(model, total, io_max) for _ in range(RUNS)])})
    for policy in POLICIES:
        log(f"apbundlefs eviction={policy}")
        row = {"system": f"{mounted} {policy}", "reader_limit": reader,
               "daemon_limit": total - reader, "result": None}
        try:
            row["result"] = median_run([run_mount(bundle, mnt, policy, reader, total - reader,
                                                  io_max) for _ in range(RUNS)])
        except RuntimeError as e:  # the daemon refused the option: no mount
            if "no mount" not in str(e):
                raise
            tail = str(e).split("no mount: ", 1)[1].strip("[]'\"")
            row["unavailable"] = f"unavailable (the daemon did not mount: {tail})"
            log(f"  {row['unavailable']}")
        if TRACE and row["result"]:
            row["replay"] = replay(policy, row["result"]["max_memory"])
        rows.append(row)
    for row in rows:
        r = row["result"]
        if r and r["tokens"] != free["tokens"]:
            raise RuntimeError(f"{row['system']}: tokens {r['tokens']} != {free['tokens']}")
    meta = {"command": ("QUICK=1 " if QUICK else "") + "scripts/bench-llama.py",
            "tree": source_tree(), "daemon": DAEMON,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine_summary(),
            "model": f"{LAYERS} layers, n_embd {EMBD}, n_ff {FF}, f16", "model_bytes": size,
            "total": total, "need": need, "reader": reader, "disk": ram.describe(),
            "variant": free["variant"], "tokens": free["tokens"], "threads": THREADS,
            "warmup": WARMUP, "measured": TOKENS, "runs": RUNS, "loadavg": os.getloadavg()}
    write_report(meta, rows)
    with open(os.path.join(OUT, "results.md")) as f:
        print(f.read())
    print(f"{OUT}/results.md, {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        cleanup()
