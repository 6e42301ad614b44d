"""Runs one mhe-edge decoder file on one runtime, for benchmarks/compat.py: standalone (numpy and the runtime
only, no mhe_edge), so it runs inside each runtime's own virtual environment.

    python compat_runner.py ort|openvino|reference MODEL.onnx CASE.npz OUT.npz

CASE.npz holds `prompt` (1, T) int64, `steps`, `kv_heads`, `head_dim`, `n_layers`, `float16`. The loop: prefill
the prompt with an empty cache, then `steps` greedy decode steps, each feeding the presents back. OUT.npz
holds the logits of every call (`logits_0` ...) and the greedy `tokens`.
"""

import sys

import numpy as np


def ort_session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(outputs, session.run(None, feeds)))


def openvino_session(path):
    import openvino as ov

    compiled = ov.Core().compile_model(
        path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )  # not bf16: compare in fp32
    request = compiled.create_infer_request()

    def run(feeds):
        results = request.infer(feeds)
        return {port.get_any_name(): np.array(value) for port, value in results.items()}

    return run


def reference_session(path):
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(path)
    outputs = list(evaluator.output_names)
    return lambda feeds: dict(zip(outputs, evaluator.run(None, feeds)))


def main(backend, model, case_path, out_path):
    case = np.load(case_path)
    run = {"ort": ort_session, "openvino": openvino_session, "reference": reference_session}[
        backend
    ](model)
    dtype = np.float16 if int(case["float16"]) else np.float32
    layers, kv, d = int(case["n_layers"]), int(case["kv_heads"]), int(case["head_dim"])
    pasts = {
        f"past_key_values.{i}.{kind}": np.zeros((1, kv, 0, d), dtype)
        for i in range(layers)
        for kind in ("key", "value")
    }
    ids, results, tokens = case["prompt"].astype(np.int64), {}, []
    for step in range(int(case["steps"]) + 1):
        outputs = run({"input_ids": ids, **pasts})
        logits = np.asarray(outputs["logits"], dtype=np.float32)
        results[f"logits_{step}"] = logits
        tokens.append(int(logits[0, -1].argmax()))
        pasts = {name: outputs[name.replace("past_key_values", "present")] for name in pasts}
        ids = np.array([[tokens[-1]]], dtype=np.int64)
    np.savez(out_path, tokens=np.array(tokens), **results)


if __name__ == "__main__":
    main(*sys.argv[1:5])
