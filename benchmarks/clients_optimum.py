"""Optimum (ORTModelForCausalLM) on a package folder, run in Optimum's own venv (it pins transformers <
4.58): greedy generate() on each prompt alone and on both as one left-padded batch; with TEXT, the
folder's tokenizer through AutoTokenizer and the pipeline too. Prints one JSON line.

    OPTIMUM_PYTHON clients_optimum.py FOLDER FILE_NAME NEW_TOKENS PROMPTS_JSON [TEXT]
"""

import json
import sys
import time

import torch
from optimum.onnxruntime import ORTModelForCausalLM

folder, file_name, new_tokens, prompts_json = sys.argv[1:5]
text = sys.argv[5] if len(sys.argv) > 5 else None
model = ORTModelForCausalLM.from_pretrained(folder, file_name=file_name, use_cache=True)
new_tokens, prompts = int(new_tokens), json.loads(prompts_json)
pad = model.generation_config.pad_token_id or 0


def greedy(rows):
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    started = time.perf_counter()
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad,
    )
    return out[:, width:].tolist(), time.perf_counter() - started


alone, seconds = [], 0.0
for prompt in prompts:
    tokens, took = greedy([prompt])
    alone.append(tokens[0])
    seconds += took
batch, _ = greedy(prompts)
result = {
    "alone": alone,
    "batch": batch,
    "ms_per_token": 1000 * seconds / (len(prompts) * new_tokens),
}
if text:
    from transformers import AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(text)["input_ids"]
    tokens, _ = greedy([ids])
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    piped = generator(text, max_new_tokens=new_tokens, do_sample=False, return_full_text=False)
    result["text"] = {
        "ids": ids,
        "tokens": tokens[0],
        "text": tokenizer.decode(tokens[0], skip_special_tokens=True),
        "pipeline": piped[0]["generated_text"],
    }
print(json.dumps(result))
