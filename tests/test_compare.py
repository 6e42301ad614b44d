"""`compare`: real exports profiled in subprocesses; ratios and the plot."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from mhe_edge.cli.output import comparison_table
from mhe_edge.errors import RequestError
from mhe_edge.workflows.compare import compare


def test_compare_builds_profiles_and_plots(tmp_path):
    plot = tmp_path / "compare.png"
    result = compare(
        preset="tiny",
        attentions=["mha", "mhe-mul"],
        seq_lens=[16, 32],
        runs=1,
        new_tokens=2,
        plot=plot,
    ).to_dict()
    rows = result["rows"]
    assert [(r["attention"], r["seq_len"]) for r in rows] == [
        ("mha", 16),
        ("mha", 32),
        ("mhe-mul", 16),
        ("mhe-mul", 32),
    ]
    mhe = [r for r in rows if r["attention"] == "mhe-mul"]
    assert all(
        r["kv_cache_bytes_vs_mha"] == pytest.approx(1 / 4) for r in mhe
    )  # one KV head instead of 4
    assert all(r["parameters_vs_mha"] < 1 for r in mhe)
    assert all(r["peak_memory_bytes"] > 0 and r["decode_ms_per_token"] > 0 for r in rows)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_compare_cli_on_files(tmp_path, cli):
    from passes_helpers import exported

    _, a = exported(tmp_path, attention="mha")
    _, b = exported(tmp_path, attention="mhe-add")
    result = cli("compare", a, b, "--seq-lens", "8", "--runs", "1", "--new-tokens", "2", "--json")
    assert result.code == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [r["attention"] for r in rows] == ["mha", "mhe-add"] and rows[1][
        "kv_cache_bytes_vs_mha"
    ] == pytest.approx(0.25)
    bad = cli("compare", a, "--seq-lens", "8,x")
    assert bad.code == 2 and "seq-lens" in bad.stderr


def test_compare_defaults_fit_a_short_context_and_rounds_are_interleaved(tmp_path):
    """tiny has 128 positions: the default lengths (128, 512) do not fit with 32 decode steps, so 96 is used."""
    result = compare(preset="tiny", attentions=["mha", "mhe-mul"], runs=2).to_dict()
    assert result["settings"]["target"] == "ort" and result["settings"]["new_tokens"] == 32
    assert result["settings"]["batch"] == 4 and not result["settings"]["synthetic_past"]
    rows = result["rows"]
    assert [(r["attention"], r["seq_len"]) for r in rows] == [("mha", 96), ("mhe-mul", 96)]
    for row in rows:
        assert row["rounds"] == 2 and row["cache"] == "in place"
        assert row["decode_ms_min"] <= row["decode_ms_per_token"] <= row["decode_ms_p90"]
        assert isinstance(row["unstable"], list)


def test_long_context_resolves_its_preset_and_rows_carry_the_cache_formula():
    """tiny has 128 positions: --long-context builds its models long enough and decodes from a past."""
    result = compare(
        preset="tiny", attentions=["mha", "mhe-mul"], long_context=True, seq_lens=[300], runs=1,
        new_tokens=2,
    ).to_dict()  # fmt: skip
    settings = result["settings"]
    assert settings["batch"] == 4 and settings["synthetic_past"] and settings["long_context"]
    mha, mhe = result["rows"]
    for row, kv_heads, head_dim in (
        (mha, 4, 16),
        (mhe, 1, 16),
    ):  # tiny: 2 layers, width 64, 4 heads
        per_token = 2 * 2 * kv_heads * head_dim * 4  # K and V, layers, heads, head size, fp32
        assert row["kv_cache_bytes_per_token"] == per_token
        assert row["kv_cache_bytes"] == 4 * (300 + 2) * per_token
        weights = row["kv_cache_bytes"] / row["cache_share_of_step"] - row["kv_cache_bytes"]
        assert row["cache_exceeds_weights_at"] == math.floor(weights / (4 * per_token) + 1e-9) + 1
        assert row["prefill_ms"] is None and row["decode_ms_per_token"] > 0
    assert mhe["kv_cache_bytes_per_token_vs_mha"] == pytest.approx(1 / 4)
    assert mhe["cache_share_of_step"] < mha["cache_share_of_step"]
    console = Console(record=True, width=200)
    console.print(comparison_table(result))
    text = console.export_text()
    assert "KV KiB/token" in text and "cache share" in text and "prefill ms" not in text
    assert "synthetic past" in text and f"mha {mha['cache_exceeds_weights_at']:,}" in text


def test_compare_preset_values_are_checked_before_any_build(cli):
    for kwargs, fragment in [
        (dict(long_context=True, batch=0), "--batch must be 1 to"),
        (dict(long_context=True, new_tokens=0), "--new-tokens of at least 1"),
        (dict(long_context=True, prefill_chunk=8), "without --prefill-chunk"),
        (dict(long_context=True, arch="encoder"), "for decoders"),
        (dict(runs=0), "--runs must be 1 to"),
    ]:
        with pytest.raises(RequestError, match=fragment):
            compare(preset="tiny", **kwargs)
    for args, fragment in [
        (["--long-context", "--batch", "0"], "--batch must be 1 to"),
        (["--long-context", "--prefill-chunk", "8"], "without --prefill-chunk"),
        (["--long-context", "--seq-lens", "2000000"], "--seq-len must be 1 to"),
    ]:
        bad = cli("compare", "--preset", "tiny", *args)
        assert bad.code == 2 and fragment in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    helped = cli("compare", "--help")
    assert helped.code == 0 and "--long-context" in helped.stdout and "16384" in helped.stdout


def _long_context_benchmark():
    path = Path(__file__).parents[1] / "benchmarks" / "long_context.py"
    spec = importlib.util.spec_from_file_location("long_context_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_long_context_benchmark_marks_cells_that_do_not_fit():
    """At Qwen2-0.5B's shape, 16k tokens at batch 8: MHA's cache alone is ~22 GB, MHE's 14 times less."""
    bench = _long_context_benchmark()
    cells = bench.plan(bench.configs("A"), [16384], [4, 8], 4, available_bytes=20 * 2**30)
    by = {(c["attention"], c["batch"]): c for c in cells}
    mha = by[("mha", 8)]
    assert mha["kv_cache_bytes"] == 24 * 2 * 14 * 64 * (16384 + 4) * 8 * 4
    assert (
        not mha["fits"]
        and mha["status"] == f"does not fit (needs {mha['needs_bytes'] / 2**30:.1f} GiB)"
    )
    assert mha["needs_bytes"] > mha["kv_cache_bytes"] + mha["weight_bytes"]
    assert by[("mhe-mul", 8)]["fits"] and by[("gqa", 8)]["fits"] and by[("mha", 4)]["fits"]
    assert by[("mhe-mul", 8)]["kv_cache_bytes"] * 14 == mha["kv_cache_bytes"]
    assert by[("gqa", 4)]["kv_heads"] == 2 and by[("mhe-mul", 4)]["kv_heads"] == 1
    assert all(c["fits"] for c in bench.plan(bench.configs("A"), [16384], [8], 4, None))
