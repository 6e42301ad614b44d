// Runs one mhe-edge decoder file on onnxruntime-node, for benchmarks/compat.py (the loop of compat_runner.py).
//   node compat_runner.mjs MODEL.onnx CASE.json OUT.json
import { readFileSync, writeFileSync } from "node:fs";
import * as ort from "onnxruntime-node";

const [model, casePath, outPath] = process.argv.slice(2);
const c = JSON.parse(readFileSync(casePath, "utf8"));
const session = await ort.InferenceSession.create(model);
const floatType = c.float16 ? "float16" : "float32";
const empty = () => new ort.Tensor(floatType, c.float16 ? new Uint16Array(0) : new Float32Array(0), [1, c.kv_heads, 0, c.head_dim]);
let pasts = {};
for (let i = 0; i < c.n_layers; i++) for (const kind of ["key", "value"]) pasts[`past_key_values.${i}.${kind}`] = empty();
let ids = c.prompt;
const logits = [], tokens = [];
for (let step = 0; step <= c.steps; step++) {
  const feeds = { input_ids: new ort.Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]), ...pasts };
  const out = await session.run(feeds);
  const [, T, V] = out.logits.dims;
  const data = out.logits.type === "float16" ? Array.from(out.logits.data, halfToFloat) : Array.from(out.logits.data);
  logits.push(data);
  const last = data.slice((T - 1) * V, T * V);
  tokens.push(last.indexOf(Math.max(...last)));
  pasts = Object.fromEntries(Object.keys(pasts).map((name) => [name, out[name.replace("past_key_values", "present")]]));
  ids = [tokens[tokens.length - 1]];
}
writeFileSync(outPath, JSON.stringify({ tokens, logits }));

function halfToFloat(h) {
  const s = (h & 0x8000) >> 15, e = (h & 0x7c00) >> 10, f = h & 0x03ff;
  if (e === 0) return (s ? -1 : 1) * Math.pow(2, -14) * (f / 1024);
  if (e === 31) return f ? NaN : (s ? -Infinity : Infinity);
  return (s ? -1 : 1) * Math.pow(2, e - 15) * (1 + f / 1024);
}
