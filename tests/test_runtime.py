"""Runtime on real ONNX Runtime (CPU): greedy generation equals PyTorch's, the profiler's report is sane,
and CUDA is refused cleanly where it is missing (CUDA tests skip without a CUDA provider)."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from passes_helpers import exported

from mhe_edge.errors import ProviderError, RequestError
from mhe_edge.passes import optimize
from mhe_edge.runtime import ExportedModel, create_session, parse_prompt
from mhe_edge.runtime.profiler import profile

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def torch_greedy(model, prompt, new_tokens):
    ids = torch.from_numpy(prompt)
    with torch.no_grad():
        for _ in range(new_tokens):
            ids = torch.cat([ids, model(ids)[0][:, -1:].argmax(-1)], 1)
    return ids[:, prompt.shape[1] :].numpy()


@pytest.mark.parametrize("attention", ["mhe-add", "mhe-mul", "mha", "gqa"])
@pytest.mark.parametrize("target", [None, "ort", "ort+query_seqlens", "portable"])
def test_generation_equals_pytorch_greedy(tmp_path, attention, target):
    model, path = exported(tmp_path, attention=attention, d_model=64)
    if target:
        path = optimize(
            path,
            tmp_path / "opt.onnx",
            target=target.split("+")[0],
            ort_query_seqlens="+" in target,
        ).output
    prompt = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]], dtype=np.int64)
    want = torch_greedy(model, prompt, 12)
    runner = ExportedModel(path)
    assert np.array_equal(runner.generate(prompt, 12), want)
    if (
        target == "ort"
    ):  # without query_seqlens a batch cannot prefill in chunks: refused, or row by row
        with pytest.raises(RequestError, match="--ort-query-seqlens"):
            runner.generate(prompt, 12, prefill_chunk=2)
        prompt, want = prompt[:1], want[:1]
    assert np.array_equal(runner.generate(prompt, 12, prefill_chunk=2), want)


def test_generate_cli_prints_tokens(tmp_path, cli):
    model, path = exported(tmp_path, attention="mhe-mul")
    result = cli("generate", path, "--prompt", "3,1,4", "--max-new-tokens", "6")
    assert result.code == 0, result.stderr
    want = torch_greedy(model, np.array([[3, 1, 4]]), 6)[0]
    assert result.stdout.strip() == "tokens: " + " ".join(map(str, want))


@pytest.mark.parametrize(
    "args,code,fragment",
    [
        (["--prompt", "3,1,9999"], 2, "outside the vocabulary"),
        (["--prompt", "-1"], 2, "outside the vocabulary"),
        (["--prompt", "3,one"], 2, "comma-separated token ids"),
        (["--prompt", ""], 2, "comma-separated token ids"),
        (["--prompt", "3", "--max-new-tokens", "64"], 2, "exceed the model's max_seq_len"),
        (["--prompt", "3", "--max-new-tokens", "-2"], 2, "--max-new-tokens must be 0 to 1,000,000"),
        (["--prompt", "3", "--provider", "tpu"], 2, "--provider must be one of cpu, cuda"),
        (["--prompt", "3", "--prefill-chunk", "0"], 2, "--prefill-chunk must be 1 to 1,048,576"),
    ],
)
def test_generate_refuses_bad_requests(tmp_path, cli, args, code, fragment):
    _, path = exported(tmp_path, attention="mhe-add")
    result = cli("generate", path, *args)
    assert result.code == code, result
    assert fragment in result.stderr and "Traceback" not in result.stderr


def test_generate_refuses_an_encoder(tmp_path, cli):
    _, path = exported(tmp_path, arch="encoder", attention="mhe-add")
    result = cli("generate", path, "--prompt", "1,2")
    assert result.code == 2 and "encoder" in result.stderr


@pytest.mark.skipif(
    HAS_CUDA, reason="this machine has CUDA; the refusal is for machines without it"
)
def test_cuda_is_refused_not_silently_replaced(tmp_path, cli):
    _, path = exported(tmp_path, attention="mhe-mul")
    with pytest.raises(ProviderError, match="CUDAExecutionProvider"):
        create_session(path, "cuda")
    result = cli("profile", path, "--provider", "cuda")
    assert result.code == ProviderError.exit_code and "CUDAExecutionProvider" in result.stderr


def test_sessions_do_not_spin_waiting_threads(tmp_path):
    _, path = exported(tmp_path, attention="mhe-mul")
    options = create_session(path, threads=2).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2


def test_profile_json_has_every_field_with_sane_values(tmp_path, cli):
    _, path = exported(tmp_path, attention="mhe-add")
    trace = tmp_path / "trace.json"
    result = cli(
        "profile",
        path,
        "--seq-len",
        "16",
        "--new-tokens",
        "4",
        "--runs",
        "2",
        "--batch",
        "2",
        "--trace",
        trace,
        "--json",
    )
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["provider"] == "cpu" and report["providers"][0] == "CPUExecutionProvider"
    latency = report["latency_ms"]
    assert latency["load"] > 0 and 0 < latency["prefill"]["p50"] <= latency["prefill"]["p90"]
    assert latency["decode_per_token"]["n"] == 2 * 4 and latency["decode_per_token"]["p50"] > 0
    assert report["tokens_per_second"] > 0
    assert (
        10 * 2**20 < report["peak_memory_bytes"] < 4 * 2**30
    )  # a real process, not a made-up figure
    cfg = ExportedModel(path).config
    assert report["kv_cache_bytes"] == 2 * (16 + 4) * 2 * cfg.n_layers * 1 * cfg.head_dim * 4
    assert report["model_file_bytes"] == path.stat().st_size and report["parameter_bytes"] > 0
    assert report["top_ops"] and {"op", "ms", "share"} <= set(report["top_ops"][0])
    assert any(e.get("cat") == "Node" for e in json.loads(trace.read_text()))


def test_profile_encoder_and_bad_values(tmp_path):
    _, path = exported(tmp_path, arch="encoder", attention="mhe-mul")
    report = profile(path, seq_len=12, runs=1).to_dict()
    assert report["latency_ms"]["forward"]["p50"] > 0 and report["kv_cache_bytes"] == 0
    for kwargs, fragment in [
        (dict(batch=0), "--batch must be 1 to 4,096, not 0"),
        (dict(seq_len=-3), "--seq-len must be 1 to"),
        (dict(seq_len=4096), "max_seq_len"),
    ]:
        with pytest.raises(RequestError, match=fragment):
            profile(path, **kwargs)


def test_parse_prompt():
    assert parse_prompt("3, 1,4").tolist() == [[3, 1, 4]]
    with pytest.raises(RequestError):
        parse_prompt("1.5")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDAExecutionProvider in this ONNX Runtime")
def test_cuda_generation_matches_cpu(tmp_path):
    _, path = exported(tmp_path, attention="mhe-mul", d_model=64)
    fp16 = optimize(
        path, tmp_path / "fp16.onnx", target="ort", fp16=True
    ).output  # GQA on CUDA is fp16/bf16 only
    prompt = np.array([[3, 1, 4, 1, 5]], dtype=np.int64)
    cpu = ExportedModel(fp16, "cpu").generate(prompt, 8)
    gpu = ExportedModel(fp16, "cuda")
    assert gpu.session.get_providers()[0] == "CUDAExecutionProvider"
    assert np.array_equal(gpu.generate(prompt, 8), cpu)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDAExecutionProvider in this ONNX Runtime")
def test_cuda_profile_reports_device_memory(tmp_path):
    _, path = exported(tmp_path, attention="mhe-add", d_model=64)
    report = profile(path, provider="cuda", seq_len=32, new_tokens=4, runs=1).to_dict()
    assert report["providers"][0] == "CUDAExecutionProvider"


@pytest.mark.parametrize("attention", ["mhe-mul", "mha"])
def test_ort_cache_is_updated_in_place_and_equals_the_copying_path(tmp_path, attention):
    _, path = exported(tmp_path, attention=attention, d_model=64)
    path = optimize(path, tmp_path / "ort.onnx", target="ort", ort_query_seqlens=True).output
    runner = ExportedModel(path)
    prompts = [[3, 1, 4, 1, 5, 9], [2, 6], [5, 3, 5]]
    in_place = runner.generate_rows(prompts, 10, stop_at_eos=False)
    chunked = runner.generate_rows([prompts[0]] * 2, 10, prefill_chunk=4, stop_at_eos=False)
    _, cache = runner.prefill(np.array([prompts[0]]), capacity=8)
    assert cache.in_place and cache.length == 6 and cache[runner.past_names[0]].shape()[2] == 8
    with pytest.raises(RequestError, match="holds 8 positions"):
        runner.step(np.array([[1, 2, 3]]), cache)
    runner.cache_in_place = False  # the copying path: each present fed back as the next past
    assert runner.generate_rows(prompts, 10, stop_at_eos=False) == in_place
    assert runner.generate_rows([prompts[0]] * 2, 10, prefill_chunk=4, stop_at_eos=False) == chunked
    _, copied = runner.prefill(np.array([prompts[0]]), capacity=8)
    assert not copied.in_place and copied[runner.past_names[0]].shape()[2] == 6


def test_profile_reports_cache_update_bandwidth_floor_and_spread(tmp_path):
    _, path = exported(tmp_path, attention="mhe-mul", d_model=64)
    path = optimize(path, tmp_path / "ort.onnx", target="ort").output
    report = profile(path, runs=2, new_tokens=8, top_ops=0)
    assert (
        report.cache == "in place" and report.seq_len == 64 - 8
    )  # the default fits the 64-position context
    decode = report.latency_ms["decode_per_token"]
    assert decode["min"] <= decode["p50"] <= decode["p90"] and decode["n"] == 16
    floor = report.bandwidth_floor
    assert floor["bytes_per_step"] >= report.parameter_bytes and floor["bandwidth_gb_s"] > 0.1
    assert (
        0 < floor["fraction"] < 3
    )  # a fraction of the floor (above 1 only if caches beat the DRAM measure)
    assert profile(path, runs=1, new_tokens=4, top_ops=0, in_place=False).cache == "copied"


def test_cuda_extra_installs_the_gpu_wheel_and_nvml_not_the_cpu_one():
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert [d.split(">")[0] for d in extras["cuda"]] == ["onnxruntime-gpu", "nvidia-ml-py"]
    assert [d.split(">")[0] for d in extras["cpu"]] == ["onnxruntime"]
    assert not [
        d for d in project["dependencies"] if d.startswith("onnxruntime")
    ]  # the extras choose the wheel


def test_a_run_larger_than_memory_is_refused_before_allocating(tmp_path):
    _, path = exported(tmp_path, attention="mhe-mul", position="rope", max_seq_len=1_048_576)
    with pytest.raises(
        RequestError, match=r"needs about [\d,.]+ GiB .* GiB this machine has available"
    ):
        profile(path, batch=4096, seq_len=1_000_000, new_tokens=1)


@pytest.mark.parametrize("in_place", [True, False])
def test_a_decode_from_a_given_past_equals_prefill_then_decode(tmp_path, in_place):
    """The past-length path feeds the cache as a prefill leaves it: the same next-token logits."""
    from mhe_edge.runtime.past_cache import cache_with_past

    _, path = exported(tmp_path, attention="mhe-mul", d_model=64)
    runner = ExportedModel(optimize(path, tmp_path / "ort.onnx", target="ort").output)
    runner.cache_in_place = in_place
    ids = np.random.default_rng(3).integers(0, runner.config.vocab_size, (2, 20))
    _, prefilled = runner.prefill(ids[:, :19], capacity=24)
    want, _ = runner.step(ids[:, 19:], prefilled)
    runner.cache_in_place = (
        False  # a real prefill's past, as plain arrays (batch, kv, 19, head_dim)
    )
    _, copied = runner.prefill(ids[:, :19])
    arrays = {name: copied[name].numpy() for name in runner.past_names}
    runner.cache_in_place = in_place
    cache = cache_with_past(runner, arrays, capacity=24)
    assert cache.in_place == in_place and cache.length == 19
    got, cache = runner.step(ids[:, 19:], cache)
    assert np.abs(got - want).max() < 1e-5
    with pytest.raises(RequestError, match="kv heads"):
        cache_with_past(runner, dict.fromkeys(runner.past_names, np.zeros((2, 3, 4, 5), "f4")))


def test_profile_past_len_times_decode_without_a_prefill(tmp_path, cli):
    _, path = exported(tmp_path, attention="mhe-mul", d_model=64)
    path = optimize(path, tmp_path / "ort.onnx", target="ort").output
    report = profile(path, past_len=50, batch=2, new_tokens=4, runs=2, top_ops=2)
    assert report.past_len == report.seq_len == 50 and report.cache == "in place"
    assert report.latency_ms["prefill"] is None and report.latency_ms["decode_per_token"]["n"] == 8
    # batch 2, past + new 54, K and V, 2 layers, 1 KV head (folded) of 16, fp32
    assert report.kv_cache_bytes == 2 * 54 * 2 * 2 * 1 * 16 * 4
    assert report.top_ops and report.bandwidth_floor["bytes_per_step"] > report.parameter_bytes
    for kwargs, fragment in [
        (
            dict(past_len=61, new_tokens=4),
            "61 past \\+ 4 new tokens exceed the model's max_seq_len 64",
        ),
        (dict(past_len=8, seq_len=8), "without --seq-len"),
        (dict(past_len=8, new_tokens=0), "--new-tokens of at least 1"),
        (dict(past_len=0), "--past-len must be 1 to"),
    ]:
        with pytest.raises(RequestError, match=fragment):
            profile(path, **kwargs)
    result = cli("profile", path, "--past-len", "40", "--new-tokens", "2", "--runs", "1", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["past_len"] == 40
    bad = cli("profile", path, "--past-len", "100")
    assert bad.code == 2 and "max_seq_len 64" in bad.stderr and "Traceback" not in bad.stderr
