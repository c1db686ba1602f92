#!/usr/bin/python3
"""Write the reference chunk-access traces for apbreplay.

Each generator writes one trace file in the format apbundlefs -o trace=FILE
writes (docs/FORMAT.md, "Trace files"), deterministic for a given --seed,
with synthetic times (1 us per record). docs/TRACES.md explains them and the
commands that replay them:

  loop      one model of RATIO x budget read start to end, PASSES times
            (a layer loop: every forward pass reads all weights in order)
  zipf      MODELS small models, popularity Zipf(ALPHA): each request reads
            one model whole
  loopzipf  a loop model and zipf traffic interleaved chunk by chunk
  recency   a working set of WS x budget sliding slowly over a larger
            model: what was used recently is used again
  stream    one model of RATIO x budget read once

With --prefetch on, every whole-model read is done in --request-sized reads
(1 MiB: what the daemon asks the kernel for) and emits the prefetch records
the daemon's readahead would submit before each read (core/readahead.c:
a window of the first read's size, doubling up to --readahead, split into
jobs of at most 1 MiB and 16 chunks, fs/ops.c). The prefetcher's backoff
(smaller windows while prefetches are wasted) and its queue limit are not
emulated. recency's reads are random and never prefetch.
"""

import argparse
import random
import struct
import sys

MAGIC = b"APBTRACE"
VERSION = 1
F_COMPLETE, F_NAMES = 0x1, 0x2
DEMAND, PREFETCH = 0, 1
RUN_MAX = 16                 # APB_CACHE_RUN_MAX
PREFETCH_JOB_BYTES = 1 << 20 # fs/ops.c
GAP_MIN_BYTES = 128 << 10    # core/readahead.c
NS_PER_RECORD = 1000


def parse_size(s):
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = s.strip().upper()
    for suffix in ("IB", "B"):
        if t.endswith(suffix) and t[:-len(suffix)][-1:] in "KMGT":
            t = t[:-len(suffix)]
    num, unit = (t[:-1], t[-1]) if t[-1:] in "KMGT" else (t, "")
    try:
        v = int(num) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError("not a size: %r (e.g. 64K, 64M)" % s)
    if v <= 0:
        raise argparse.ArgumentTypeError("size must be positive: %r" % s)
    return v


class Trace:
    """Models and records; write() lays them out as docs/FORMAT.md says."""

    def __init__(self, chunk_size):
        self.cs = chunk_size
        self.models = []     # (name, size)
        self.records = bytearray()
        self.count = 0

    def add_model(self, name, size):
        self.models.append((name, size))
        return len(self.models) - 1

    def chunks(self, model):
        return -(-self.models[model][1] // self.cs)

    def record(self, kind, model, chunk, count=1):
        t = self.count * NS_PER_RECORD
        self.records += struct.pack("<QQ", t | count << 56 | kind << 63,
                                    chunk | model << 44)
        self.count += 1

    def write(self, path):
        table = bytearray()
        for name, size in self.models:
            raw = name.encode()
            entry = struct.pack("<QI", size, len(raw)) + raw
            table += entry + bytes(-len(entry) % 8)
        header_bytes = 64 + len(table)
        header_bytes += -header_bytes % 16
        head = MAGIC + struct.pack("<IIIIII", VERSION, header_bytes, 16, self.cs,
                                   len(self.models), F_COMPLETE | F_NAMES)
        head += struct.pack("<QQQQ", self.count, 0, 0, 0)
        body = head + table
        body += bytes(header_bytes - len(body))
        with open(path, "wb") as f:
            f.write(body)
            f.write(self.records)


class SequentialRead:
    """One read of a model from its first byte to its last, in `request`-
    sized reads, chunk by chunk: next() gives the records the reader emits
    when it reaches its next chunk (the prefetch jobs of a read that begins
    there, then the demand), or None at the end. Emulates one stream of
    core/readahead.c."""

    def __init__(self, trace, model, prefetch, request, readahead):
        self.t, self.m, self.prefetch = trace, model, prefetch
        self.request, self.limit = request, max(1, readahead // trace.cs)
        self.size = trace.models[model][1]
        self.chunk, self.nchunks = 0, trace.chunks(model)
        self.end = None          # the stream: its end, window, next_unissued
        self.window = self.next_unissued = 0
        self.pending = None      # (first, count) to prefetch after this read

    def _note(self, off, length):
        cs = self.t.cs
        end, last = off + length, (off + length - 1) // cs
        gap = max(cs, GAP_MIN_BYTES, 2 * length)
        if self.end is None or abs(off - self.end) > gap:
            self.end, self.window, self.next_unissued = end, last - off // cs + 1, last + 1
            if off != 0:
                return None
        w = min(self.window, self.limit)
        first = max(self.next_unissued, last + 1)
        to = min(last + w, (self.size - 1) // cs)
        self.window = 2 * w
        self.end = max(self.end, end)
        if to < first:
            return None
        self.next_unissued = to + 1
        return first, to - first + 1

    def _prefetch_jobs(self, first, count):
        job = min(RUN_MAX, max(1, PREFETCH_JOB_BYTES // self.t.cs))
        for done in range(0, count, job):
            self.t.record(PREFETCH, self.m, first + done, min(job, count - done))

    def next(self):
        if self.chunk >= self.nchunks:
            return None
        off = self.chunk * self.t.cs
        if self.prefetch and off % self.request == 0:
            self.pending = self._note(off, min(self.request, self.size - off))
        self.t.record(DEMAND, self.m, self.chunk)
        self.chunk += 1
        # The jobs follow the demand records of the read that submitted
        # them: the daemon queues them first, but the read's miss takes
        # its slots at once, while the workers' loads end later.
        if self.pending and (self.chunk * self.t.cs % self.request == 0
                             or self.chunk == self.nchunks):
            self._prefetch_jobs(*self.pending)
            self.pending = None
        return True


def read_whole(trace, model, a):
    r = SequentialRead(trace, model, a.prefetch == "on", a.request, a.readahead)
    while r.next():
        pass


def zipf_models(trace, a, rng):
    """The small models and their Zipf weights (model k: 1 / (k + 1)^alpha)."""
    max_chunks = max(1, a.model_max // trace.cs)
    ids = [trace.add_model("zipf/%03d" % k, rng.randint(1, max_chunks) * trace.cs)
           for k in range(a.models)]
    weights = [1.0 / (k + 1) ** a.alpha for k in range(a.models)]
    return ids, weights


def gen_loop(trace, a, rng):
    m = trace.add_model("loop.bin", int(a.ratio * a.budget))
    for _ in range(a.passes):
        read_whole(trace, m, a)


def gen_stream(trace, a, rng):
    m = trace.add_model("stream.bin", int(a.ratio * a.budget))
    read_whole(trace, m, a)


def gen_zipf(trace, a, rng):
    ids, weights = zipf_models(trace, a, rng)
    for m in rng.choices(ids, weights, k=a.requests):
        read_whole(trace, m, a)


def gen_loopzipf(trace, a, rng):
    loop = trace.add_model("loop.bin", int(a.ratio * a.budget))
    ids, weights = zipf_models(trace, a, rng)
    pre, req, ra = a.prefetch == "on", a.request, a.readahead
    small = None
    for _ in range(a.passes):
        big = SequentialRead(trace, loop, pre, req, ra)
        while big.next():
            if rng.random() >= a.mix:
                continue
            # One chunk of the current zipf request; a finished request
            # is followed by the next model Zipf picks.
            while small is None or not small.next():
                small = SequentialRead(trace, rng.choices(ids, weights)[0],
                                       pre, req, ra)


def gen_recency(trace, a, rng):
    span = max(2, int(a.span * a.budget) // trace.cs)
    ws = max(1, min(span - 1, int(a.ws * a.budget) // trace.cs))
    m = trace.add_model("recency.bin", span * trace.cs)
    accesses = a.accesses or (span - ws) * a.dwell
    start = 0
    for i in range(accesses):
        trace.record(DEMAND, m, start + rng.randrange(ws))
        if (i + 1) % a.dwell == 0:
            start = (start + 1) % (span - ws + 1)


GENERATORS = {"loop": gen_loop, "zipf": gen_zipf, "loopzipf": gen_loopzipf,
              "recency": gen_recency, "stream": gen_stream}


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("generator", choices=sorted(GENERATORS))
    ap.add_argument("-o", "--output", required=True, help="the trace file to write")
    g = ap.add_argument_group("all generators")
    g.add_argument("--budget", type=parse_size, default=parse_size("64M"),
                   help="the cache budget the sizes are relative to (default 64M); "
                   "replay with the same --budget")
    g.add_argument("--chunk-size", type=parse_size, default=parse_size("64K"),
                   help="the cache chunk (default 64K)")
    g.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    g.add_argument("--prefetch", choices=("on", "off"), default="off",
                   help="emit the readahead's prefetch records (default off)")
    g.add_argument("--request", type=parse_size, default=parse_size("1M"),
                   help="sequential read size for the readahead emulation (default 1M)")
    g.add_argument("--readahead", type=parse_size, default=parse_size("4M"),
                   help="the daemon's readahead= limit (default 4M)")
    g = ap.add_argument_group("loop, loopzipf, stream")
    g.add_argument("--ratio", type=float, default=None,
                   help="the big model's size over the budget (default 2 for loop "
                   "and loopzipf, 4 for stream)")
    g.add_argument("--passes", type=int, default=5,
                   help="passes over the loop model (default 5)")
    g = ap.add_argument_group("zipf, loopzipf")
    g.add_argument("--models", type=int, default=100, help="small models (default 100)")
    g.add_argument("--model-max", type=parse_size, default=parse_size("2M"),
                   help="largest small model; sizes are uniform in whole chunks from "
                   "one chunk (default 2M)")
    g.add_argument("--alpha", type=float, default=1.0,
                   help="Zipf exponent of model popularity (default 1.0)")
    g.add_argument("--requests", type=int, default=2000,
                   help="zipf: whole-model reads (default 2000)")
    g.add_argument("--mix", type=float, default=0.5,
                   help="loopzipf: chance of one zipf chunk after each loop chunk "
                   "(default 0.5)")
    g = ap.add_argument_group("recency")
    g.add_argument("--ws", type=float, default=0.5,
                   help="working set over the budget (default 0.5)")
    g.add_argument("--span", type=float, default=8.0,
                   help="the model the window slides over, over the budget (default 8)")
    g.add_argument("--dwell", type=int, default=4,
                   help="accesses before the window moves one chunk (default 4)")
    g.add_argument("--accesses", type=int, default=0,
                   help="accesses (default: until the window reaches the end)")
    a = ap.parse_args()
    if a.chunk_size % 4096:
        ap.error("--chunk-size must be a multiple of 4K")
    if a.budget < a.chunk_size:
        ap.error("--budget must hold at least one chunk")
    if a.ratio is None:
        a.ratio = 4.0 if a.generator == "stream" else 2.0
    if a.ratio <= 0 or a.passes < 1 or a.models < 1 or a.dwell < 1 or a.span <= a.ws:
        ap.error("--ratio, --passes, --models, --dwell must be positive and --span > --ws")
    trace = Trace(a.chunk_size)
    GENERATORS[a.generator](trace, a, random.Random(a.seed))
    trace.write(a.output)
    print("%s: %d records, %d models" % (a.output, trace.count, len(trace.models)),
          file=sys.stderr)


if __name__ == "__main__":
    main()
