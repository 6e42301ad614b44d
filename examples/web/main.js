// Load a transformers.js package of an mhe-edge model, tokenize, generate greedily, stream the text.
// Query parameters: model (a folder under ./models/, default "model"), dtype (fp32, fp16, q8, q4),
// device (wasm or webgpu), text and new_tokens; autorun=1 generates at once (what the check uses).
// When a run ends, window.mheResult holds {ids, tokens, text, ms_per_token, device} for scripts.
import { AutoModelForCausalLM, AutoTokenizer, TextStreamer, env } from "./vendor/transformers.web.js";

const params = new URLSearchParams(location.search);
const modelName = params.get("model") ?? "model";
const dtype = params.get("dtype") ?? "fp32";
const $ = (id) => document.getElementById(id);

env.allowLocalModels = true; // the package is served beside the page (off by default in browsers)
env.allowRemoteModels = false; // no hub
env.localModelPath = new URL("./models/", location.href).pathname; // a path: transformers.js joins it with "/"
env.useBrowserCache = false;
env.backends.onnx.wasm.wasmPaths = new URL("./vendor/", location.href).href; // not the CDN default
env.backends.onnx.wasm.numThreads = 1; // threads need a cross-origin-isolated page

if (!navigator.gpu) $("device").options[1].disabled = true; // no WebGPU in this browser
if (params.get("device")) $("device").value = params.get("device");
if (params.get("text")) $("prompt").value = params.get("text");
if (params.get("new_tokens")) $("new-tokens").value = params.get("new_tokens");

let tokenizer;
const models = {};
async function modelFor(device) {
  models[device] ??= await AutoModelForCausalLM.from_pretrained(modelName, { dtype, device });
  return models[device];
}
async function load() {
  tokenizer = await AutoTokenizer.from_pretrained(modelName);
  await modelFor($("device").value);
  $("status").textContent = `loaded ${modelName} (${dtype})`;
  $("generate").disabled = false;
}

async function generate() {
  const device = $("device").value;
  const model = await modelFor(device);
  const newTokens = Number($("new-tokens").value);
  const ids = tokenizer.encode($("prompt").value, { add_special_tokens: false });
  const inputs = tokenizer($("prompt").value, { add_special_tokens: false });
  $("output").textContent = "";
  $("generate").disabled = true;
  const streamer = new TextStreamer(tokenizer, {
    skip_prompt: true,
    skip_special_tokens: true,
    callback_function: (text) => { $("output").textContent += text; },
  });
  const started = performance.now();
  const out = await model.generate({ ...inputs, max_new_tokens: newTokens, do_sample: false, streamer });
  const ms = performance.now() - started;
  const tokens = out.tolist()[0].map(Number).slice(ids.length);
  const text = tokenizer.decode(tokens, { skip_special_tokens: true });
  $("status").textContent = `${tokens.length} tokens in ${ms.toFixed(0)} ms on ${device}`;
  $("generate").disabled = false;
  window.mheResult = { ids, tokens, text, streamed: $("output").textContent, ms_per_token: ms / tokens.length, device };
}

$("generate").addEventListener("click", () => generate().catch(fail));
function fail(error) {
  $("status").textContent = `error: ${error.message ?? error}`;
  window.mheResult = { error: String(error.message ?? error) };
}
load()
  .then(() => (params.get("autorun") === "1" ? generate() : null))
  .catch(fail);
