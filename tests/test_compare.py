"""`compare`: real exports profiled in subprocesses; ratios and the plot."""

import json

import pytest

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
    rows = result["rows"]
    assert [(r["attention"], r["seq_len"]) for r in rows] == [("mha", 96), ("mhe-mul", 96)]
    for row in rows:
        assert row["rounds"] == 2 and row["cache"] == "in place"
        assert row["decode_ms_min"] <= row["decode_ms_per_token"] <= row["decode_ms_p90"]
        assert isinstance(row["unstable"], list)
