// Greedy generation with llama.cpp (node-llama-cpp 3.21.1, CPU only): load a
// GGUF, evaluate a fixed prompt, take the most likely token N times, print one
// JSON line with the token ids, timings and the bytes this process read.
// load_s runs from the start to the context created, libs_s (part of it)
// until node-llama-cpp's native libraries are loaded, before the model is.
//
//   node scripts/llama/generate.mjs MODEL.gguf [--tokens N] [--threads T]
//        [--warmup W] [--ctx C] [--prompt TEXT] [--stats MOUNT/.stats] [--log]
//
// Install first: . scripts/deps.sh && install_llama  (npm ci in scripts/llama).
// The first W generated tokens (default 1: the one that follows the prompt,
// the first pass over every weight after the load) are the warm-up; the
// "measured" numbers cover the tokens after them. --stats reads an apbundlefs
// .stats file at the same points, so that the bytes the mount read from its
// bundle can be split the same way. "variant" is the ggml CPU library that
// this process mapped (libggml-cpu-VARIANT.so); "amx" is true when ggml logged
// an AMX buffer, i.e. copied the weights into anonymous memory at load, which
// defeats reading the model through a cache: install_llama removes that
// library, and this script exits 3 if it was used anyway.
import {readFileSync, realpathSync} from "node:fs";
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const args = process.argv.slice(2);
const opt = {tokens: 16, threads: 2, warmup: 1, ctx: 256, log: false,
             prompt: "the model file is read from the bundle", stats: null};
let modelPath = null;
for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--log") opt.log = true;
    else if (a.startsWith("--") && a.slice(2) in opt && i + 1 < args.length) {
        const k = a.slice(2);
        opt[k] = typeof opt[k] === "number" ? Number(args[++i]) : args[++i];
    } else if (!a.startsWith("--") && modelPath === null) modelPath = a;
    else {
        console.error(`generate.mjs: bad argument ${a}`);
        process.exit(2);
    }
}
if (modelPath === null || !(opt.tokens > opt.warmup) || !(opt.warmup >= 1)) {
    console.error("usage: generate.mjs MODEL.gguf [--tokens N (> warmup)] [--threads T] " +
                  "[--warmup W (>= 1)] [--ctx C] [--prompt TEXT] [--stats PATH] [--log]");
    process.exit(2);
}

function procField(file, key) {
    const m = readFileSync(file, "utf8").match(new RegExp(`^${key}:\\s+(\\d+)`, "m"));
    return m ? Number(m[1]) : null;
}

// Where this process stands: seconds, bytes read from disk, memory, and the
// mount's bytes read from its bundle.
function point() {
    const p = {t: performance.now() / 1000,
               read_bytes: procField("/proc/self/io", "read_bytes"),
               rss_anon: procField("/proc/self/status", "RssAnon") * 1024,
               rss_file: procField("/proc/self/status", "RssFile") * 1024};
    if (opt.stats)
        p.backing_bytes_read = JSON.parse(readFileSync(opt.stats, "utf8")).io.backing_bytes_read;
    return p;
}

// Bytes of the model file's mapping that are resident in this process.
function modelRss() {
    const path = realpathSync(modelPath);
    let rss = 0, inModel = false;
    for (const line of readFileSync("/proc/self/smaps", "utf8").split("\n")) {
        const m = line.match(/^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/);
        if (m) inModel = m[1] === path;
        else if (inModel && line.startsWith("Rss:")) rss += Number(line.split(/\s+/)[1]) * 1024;
    }
    return rss;
}

function cpuVariant() {
    const m = readFileSync("/proc/self/maps", "utf8").match(/libggml-cpu-([\w-]+)\.so/);
    return m ? m[1] : "unknown";
}

const logs = [];
const start = point();
const llama = await getLlama({
    gpu: false, build: "never", skipDownload: true, maxThreads: opt.threads,
    logLevel: LlamaLogLevel.info,
    logger: (level, message) => {
        logs.push(message);
        if (opt.log) process.stderr.write(`[${level}] ${message}\n`);
    },
});
const libs = point();  // the native libraries loaded: the model's load starts here
const model = await llama.loadModel({modelPath, useMmap: true, gpuLayers: 0});
const context = await model.createContext({contextSize: opt.ctx, threads: opt.threads});
const loaded = point();
const amx = logs.some((l) => /AMX/.test(l));
const variant = cpuVariant();
if (amx) {
    console.error(`generate.mjs: ggml's ${variant} variant copied the weights into an AMX ` +
                  "buffer; remove libggml-cpu-sapphirerapids.so (install_llama does)");
    process.exit(3);
}

const sequence = context.getSequence();
const ids = [];
let warm = null;  // the point after the warm-up tokens
for await (const token of sequence.evaluate(model.tokenize(opt.prompt), {temperature: 0})) {
    ids.push(token);
    if (ids.length === opt.warmup) warm = point();
    if (ids.length >= opt.tokens) break;
}
const end = point();
const measured = ids.length - opt.warmup;

function delta(a, b, key) {
    return a[key] === undefined ? null : b[key] - a[key];
}

console.log(JSON.stringify({
    tokens: ids,
    variant, amx,
    threads: opt.threads, warmup: opt.warmup, measured,
    load_s: loaded.t - start.t,
    libs_s: libs.t - start.t,
    warmup_s: warm.t - loaded.t,
    measured_s: end.t - warm.t,
    tokens_per_s: measured / (end.t - warm.t),
    load_read_bytes: delta(start, loaded, "read_bytes"),
    warmup_read_bytes: delta(loaded, warm, "read_bytes"),
    measured_read_bytes: delta(warm, end, "read_bytes"),
    warmup_backing_bytes: delta(loaded, warm, "backing_bytes_read"),
    measured_backing_bytes: delta(warm, end, "backing_bytes_read"),
    rss_anon: end.rss_anon, rss_file: end.rss_file, model_rss: modelRss(),
    vm_hwm: procField("/proc/self/status", "VmHWM") * 1024,
}));
await context.dispose();
await model.dispose();
await llama.dispose();
