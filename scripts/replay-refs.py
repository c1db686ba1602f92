#!/usr/bin/python3
"""Replay every reference trace at 64 MiB and check auto against its target.

Writes the reference traces of docs/TRACES.md once into --dir (loop 1.25x,
2x, 4x; zipf; recency; stream; loopzipf seeds 1-3 and 20 passes; each with
--prefetch off and on), replays each with the build's apbreplay, one at a
time, and prints a row per trace with issue 14's target
(docs/PERFORMANCE.md, "Models larger than the budget"):

  loops, loopzipf   auto's saved / OPT's saved; >= 0.9 (prefetch off),
                    >= 0.8 (prefetch on)
  zipf, recency     auto's hit rate within 0.02 of the better of lru and lfu
  stream            auto reads no more than lru

  ninja -C build && scripts/replay-refs.py
  scripts/replay-refs.py --build /other/build      # another checkout's
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def traces():
    """(name, tracegen arguments, prefetch, kind) of each reference trace."""
    out = []
    for pf in ("off", "on"):
        for ratio in ("1.25", "2", "4"):
            out.append(("loop%s-%s" % (ratio, pf), ["loop", "--ratio", ratio], pf, "opt"))
        out.append(("zipf-" + pf, ["zipf"], pf, "best"))
        out.append(("recency-" + pf, ["recency"], pf, "best"))
        out.append(("stream-" + pf, ["stream"], pf, "lru"))
        for seed in ("1", "2", "3"):
            out.append(("loopzipf-s%s-%s" % (seed, pf),
                        ["loopzipf", "--seed", seed], pf, "opt"))
        out.append(("loopzipf-p20-" + pf, ["loopzipf", "--passes", "20"], pf, "opt"))
    return out


def hit_rate(row):
    return row["hits"] / row["demand"]


def judge(kind, prefetch, p):
    """The row's text and whether auto meets the target."""
    auto = p["auto"]
    if kind == "opt":
        ratio = auto["saved"] / p["OPT"]["saved"]
        ok = ratio >= (0.9 if prefetch == "off" else 0.8)
        return ("saved/OPT %.3f  hits %d  OPT %d  A0 %d" %
                (ratio, auto["hits"], p["OPT"]["hits"], p["A0"]["hits"]), ok)
    if kind == "best":
        best = max(hit_rate(p["lru"]), hit_rate(p["lfu"]))
        ok = hit_rate(auto) >= best - 0.02
        return ("hit rate %.4f  best of lru, lfu %.4f  (%+.4f)" %
                (hit_rate(auto), best, hit_rate(auto) - best), ok)
    ok = auto["read_bytes"] <= p["lru"]["read_bytes"]
    return ("read %d  lru %d" % (auto["read_bytes"], p["lru"]["read_bytes"]), ok)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"),
                    help="the build directory whose tools/apbreplay to run")
    ap.add_argument("--dir", default="/tmp/apb-ref-traces",
                    help="where the traces are written, once (default %(default)s)")
    a = ap.parse_args()

    os.makedirs(a.dir, exist_ok=True)
    failed = 0
    for name, gen, prefetch, kind in traces():
        path = os.path.join(a.dir, name + ".trace")
        if not os.path.exists(path):
            subprocess.run([os.path.join(HERE, "tracegen.py")] + gen +
                           ["--prefetch", prefetch, "-o", path], check=True,
                           stdout=subprocess.DEVNULL)
        out = subprocess.run([os.path.join(a.build, "tools", "apbreplay"),
                              "--budget", "64M", "--json", path], check=True,
                             capture_output=True, text=True).stdout
        p = {row["policy"]: row for row in json.loads(out)["policies"]}
        text, ok = judge(kind, prefetch, p)
        failed += not ok
        print("%-20s %-4s %s" % (name, "PASS" if ok else "MISS", text))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
