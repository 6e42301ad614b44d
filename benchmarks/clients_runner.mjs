// transformers.js on a package folder, as a user runs it: AutoModelForCausalLM.from_pretrained with a
// dtype, then greedy generate() on each prompt alone and on both as one left-padded batch (what
// transformers.js pads); with --text, AutoTokenizer too. Prints one JSON line.
//   node clients_runner.mjs FOLDER DTYPE NEW_TOKENS PROMPTS_JSON [TEXT]
import path from "node:path";
import { AutoModelForCausalLM, AutoTokenizer, Tensor, env } from "@huggingface/transformers";

const [folder, dtype, newTokens, promptsJson, text] = process.argv.slice(2);
env.allowRemoteModels = false;
env.localModelPath = path.dirname(path.resolve(folder));
const name = path.basename(path.resolve(folder));
const model = await AutoModelForCausalLM.from_pretrained(name, { dtype, device: "cpu" });
const maxNew = Number(newTokens);

function batch(rows, pad) {
  const width = Math.max(...rows.map((r) => r.length));
  const ids = rows.flatMap((r) => [...Array(width - r.length).fill(pad), ...r]);
  const mask = rows.flatMap((r) => [...Array(width - r.length).fill(0), ...r.map(() => 1)]);
  const dims = [rows.length, width];
  return {
    input_ids: new Tensor("int64", BigInt64Array.from(ids.map(BigInt)), dims),
    attention_mask: new Tensor("int64", BigInt64Array.from(mask.map(BigInt)), dims),
    width,
  };
}

async function greedy(rows) {
  const pad = model.generation_config?.pad_token_id ?? 0;
  const { input_ids, attention_mask, width } = batch(rows, pad);
  const started = performance.now();
  const out = await model.generate({
    input_ids, attention_mask, max_new_tokens: maxNew, min_new_tokens: maxNew, do_sample: false,
  });
  const ms = performance.now() - started;
  const all = out.tolist().map((r) => r.map(Number));
  return { tokens: all.map((r) => r.slice(width)), ms };
}

const prompts = JSON.parse(promptsJson);
const alone = [];
let ms = 0;
for (const p of prompts) {
  const r = await greedy([p]);
  alone.push(r.tokens[0]);
  ms += r.ms;
}
const padded = await greedy(prompts);
const result = { alone, batch: padded.tokens, ms_per_token: ms / (prompts.length * maxNew) };
if (text) {
  const tokenizer = await AutoTokenizer.from_pretrained(name);
  const ids = tokenizer.encode(text, { add_special_tokens: false });
  const r = await greedy([ids]);
  result.text = { ids, tokens: r.tokens[0], text: tokenizer.decode(r.tokens[0], { skip_special_tokens: true }) };
}
console.log(JSON.stringify(result));
