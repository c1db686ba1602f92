#!/usr/bin/python3
"""What a cache split in two parts gets on a trace with one looping model.

Splits a trace's demand records into the loop model's (by default the
model with the most demand records) and everyone else's, writes each part
as a trace, and replays both with apbreplay: the loop's part with L slots,
the rest with the other SLOTS - L, for several L. The sum of the two
parts' saved bytes is what a policy would save that gave the loop a fixed
partition of L slots (UBM's idea: Kim et al., OSDI 2000) and handled each
part as well as the policy replayed on it: the loop's part by OPT (with a
fixed partition no policy does better there; on a cyclic loop OPT keeps
L - 1 chunks, which the retained part of auto or an MRU partition keeps
too), the rest by lru, lfu, auto, A0 or OPT. Printed as a fraction of
what OPT saves on the whole trace (docs/PERFORMANCE.md, "Models larger
than the budget"), beside the whole trace's own auto, A0 and OPT.

One more column, mlfu, is a policy the library does not have, simulated
here on the rest: frequency per model instead of per chunk (each model
counts its requests, a request being a read that restarts at or before
the chunk it last read; the victim is a chunk of the least requested
model with resident chunks, the one it read last). On traces whose
requests read whole models (tracegen's zipf and loopzipf) that is the
best estimate of a chunk's popularity an online policy has.

Demand records only: run it on a trace written with --prefetch off.

  scripts/tracegen.py loopzipf --seed 2 -o /tmp/lz2.trace
  scripts/split-bound.py --budget 64M /tmp/lz2.trace
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

HEADER = struct.Struct("<8sIIIIII")      # magic .. flags
RECORD = struct.Struct("<QQ")
KIND_PREFETCH = 1 << 63
MODEL_SHIFT = 44


def parse_size(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if s and s[-1].upper() in units:
        return int(s[:-1]) * units[s[-1].upper()]
    return int(s)


def read_trace(path):
    """The header bytes, chunk size and demand records (word 0, word 1)."""
    with open(path, "rb") as f:
        data = f.read()
    magic, _, header_bytes, rec_size, chunk, _, _ = HEADER.unpack_from(data)
    if magic != b"APBTRACE" or rec_size != RECORD.size:
        sys.exit("%s: not a trace file" % path)
    demand = [r for r in RECORD.iter_unpack(data[header_bytes:])
              if not r[0] & KIND_PREFETCH]
    return data[:header_bytes], chunk, demand


def write_trace(path, header, records):
    """header with its record count set to len(records), then records."""
    head = bytearray(header)
    struct.pack_into("<Q", head, 32, len(records))
    with open(path, "wb") as f:
        f.write(head)
        for r in records:
            f.write(RECORD.pack(*r))


def replay(apbreplay, budget, path):
    """apbreplay's rows by policy name."""
    out = subprocess.run([apbreplay, "--budget", str(budget), "--prefetch", "off",
                          "--json", path], check=True, capture_output=True,
                         text=True).stdout
    return {p["policy"]: p for p in json.loads(out)["policies"]}


def saved_bytes(row):
    return row["served_bytes"] - row["read_bytes"]


def mlfu_saved(records, slots, chunk):
    """Saved bytes of the per-model frequency policy (the module's
    docstring) with slots slots; every chunk counted as a whole chunk."""
    requests, last_index = {}, {}
    resident = {}                 # model -> {chunk index: last use}
    used = hits = 0
    for t, (_, key) in enumerate(records):
        model, index = key >> MODEL_SHIFT, key & ((1 << MODEL_SHIFT) - 1)
        if model not in requests:
            requests[model] = 1
        elif index <= last_index[model]:
            requests[model] += 1
        last_index[model] = index
        chunks = resident.setdefault(model, {})
        if index in chunks:
            hits += 1
        elif used == slots:
            # the least requested model; on a tie, not the reader's own
            victim = min((m for m in resident if resident[m]),
                         key=lambda m: (requests[m], m == model))
            gone = max(resident[victim], key=resident[victim].get)
            del resident[victim][gone]
        else:
            used += 1
        chunks[index] = t
    return hits * chunk


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--budget", type=parse_size, required=True,
                    help="the cache budget (apbreplay --budget)")
    ap.add_argument("--loop-model", type=int, default=None,
                    help="the loop model's index (default: the most demanded)")
    ap.add_argument("--steps", type=int, default=8,
                    help="values of L, from SLOTS/2 to SLOTS in equal steps "
                    "(default 8)")
    ap.add_argument("--apbreplay", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "build", "tools",
        "apbreplay"), help="the apbreplay to run (default ../build/tools/apbreplay)")
    a = ap.parse_args()

    header, chunk, demand = read_trace(a.trace)
    slots = a.budget // chunk
    counts = {}
    for _, key in demand:
        counts[key >> MODEL_SHIFT] = counts.get(key >> MODEL_SHIFT, 0) + 1
    loop = a.loop_model if a.loop_model is not None else max(counts, key=counts.get)
    loop_part = [r for r in demand if r[1] >> MODEL_SHIFT == loop]
    rest_part = [r for r in demand if r[1] >> MODEL_SHIFT != loop]

    whole = replay(a.apbreplay, a.budget, a.trace)
    opt = saved_bytes(whole["OPT"])
    print("%s: %d demand records, loop model %d (%d), the rest %d; %d slots"
          % (a.trace, len(demand), loop, len(loop_part), len(rest_part), slots))
    print("whole trace, saved / OPT's: auto %.3f  A0 %.3f  (OPT hits %d)"
          % (saved_bytes(whole["auto"]) / opt, saved_bytes(whole["A0"]) / opt,
             whole["OPT"]["hits"]))
    names = ("lru", "lfu", "auto", "A0", "OPT")
    print("%6s %6s  %s" % ("L", "loop", "  ".join("%6s" % n for n in names + ("mlfu",))))
    with tempfile.TemporaryDirectory() as tmp:
        loop_path, rest_path = os.path.join(tmp, "loop"), os.path.join(tmp, "rest")
        write_trace(loop_path, header, loop_part)
        write_trace(rest_path, header, rest_part)
        for i in range(a.steps + 1):
            lslots = slots // 2 + (slots - slots // 2) * i // a.steps
            lslots = min(lslots, slots - 1)
            lp = replay(a.apbreplay, lslots * chunk, loop_path)
            rp = replay(a.apbreplay, (slots - lslots) * chunk, rest_path)
            base = saved_bytes(lp["OPT"])
            cells = ["%6.3f" % ((base + saved_bytes(rp[n])) / opt) for n in names]
            cells.append("%6.3f" % ((base + mlfu_saved(rest_part, slots - lslots,
                                                         chunk)) / opt))
            print("%6d %6d  %s" % (lslots, lp["OPT"]["hits"], "  ".join(cells)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
