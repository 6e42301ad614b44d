"""The public Python API: every command's function, typed results whose `to_dict()` is what `--json`
prints, and a lazy `import mhe_edge`."""

import json
import subprocess
import sys

import numpy as np
import pytest

import mhe_edge


def test_import_is_lazy():
    code = (
        "import sys, mhe_edge; assert 'torch' not in sys.modules"
        " and 'onnxruntime' not in sys.modules; print(len(mhe_edge.__all__))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_public_function_has_an_example():
    for name in (
        "export",
        "optimize",
        "profile",
        "compare",
        "generate",
        "to_ort",
        "package",
        "describe",
        "load_model",
        "init_model",
        "save_model",
    ):
        function = getattr(mhe_edge, name)
        assert callable(function) and "Example" in (function.__doc__ or ""), name


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """init -> export -> optimize (ort) through the API, once for this module."""
    folder = tmp_path_factory.mktemp("api")
    init = mhe_edge.init_model(
        folder / "m.pt", attention="mhe-add", preset="tiny", n_layers=1, seed=3
    )
    exported = mhe_edge.export(folder / "m.pt", folder / "m.onnx")
    optimized = mhe_edge.optimize(folder / "m.onnx", target="ort")
    return folder, init, exported, optimized


def test_build_export_optimize(pipeline):
    folder, init, exported, optimized = pipeline
    assert init.config["attention"] == "mhe-add" and init.parameters["total"] > 0
    assert isinstance(exported, mhe_edge.ExportReport) and exported.max_abs_diff <= 1e-4
    assert isinstance(optimized, mhe_edge.OptimizeReport) and optimized.output == str(
        folder / "m.opt.onnx"
    )
    assert optimized.op_counts_after.get("com.microsoft.GroupQueryAttention") == 1
    described = mhe_edge.describe(optimized.output)
    assert described.target == "ort" and described.precision == "fp32" and described.kind == "onnx"
    model = mhe_edge.load_model(folder / "m.pt")
    mhe_edge.save_model(model, folder / "copy.safetensors")
    assert (
        mhe_edge.describe(folder / "copy.safetensors").stored_parameters
        == mhe_edge.describe(folder / "m.pt").stored_parameters
    )


def test_generate_and_profile_match_the_cli(pipeline, cli):
    folder, _, _, optimized = pipeline
    result = mhe_edge.generate(optimized.output, [3, 1, 4], max_new_tokens=5)
    assert isinstance(result, mhe_edge.GenerateResult) and len(result.tokens[0]) == 5
    printed = cli(
        "generate", optimized.output, "--prompt", "3,1,4", "--max-new-tokens", "5", "--json"
    )
    assert printed.code == 0 and json.loads(printed.stdout) == result.to_dict()
    again = mhe_edge.generate(folder / "m.onnx", np.array([[3, 1, 4]]), max_new_tokens=5)
    assert again.tokens == result.tokens  # the optimized model generates what the export does
    report = mhe_edge.profile(optimized.output, seq_len=16, new_tokens=2, runs=1, warmup=0)
    assert (
        isinstance(report, mhe_edge.ProfileReport)
        and report.latency_ms["decode_per_token"]["n"] == 2
    )
    assert json.loads(json.dumps(report.to_dict())) == report.to_dict()


def test_describe_json_is_to_dict(pipeline, cli):
    folder, *_ = pipeline
    printed = cli("inspect", folder / "m.onnx", "--json")
    assert (
        printed.code == 0
        and json.loads(printed.stdout) == mhe_edge.describe(folder / "m.onnx").to_dict()
    )


def test_to_ort_and_package(pipeline, tmp_path):
    folder, _, _, optimized = pipeline
    ort = mhe_edge.to_ort(folder / "m.onnx", tmp_path / "m.ort")
    assert isinstance(ort, mhe_edge.ToOrtReport) and ort.max_abs_diff <= 1e-5
    packaged = mhe_edge.package(optimized.output, tmp_path / "pkg")
    assert (
        isinstance(packaged, mhe_edge.PackageReport) and packaged.target == "ort"
    )  # the input's own target
    assert packaged.check["status"] in ("passed",) or packaged.check["status"].startswith("skipped")


def test_optimizing_for_another_target_is_refused(pipeline, tmp_path):
    _, _, _, optimized = pipeline
    with pytest.raises(mhe_edge.MheEdgeError, match="already optimized for target ort"):
        mhe_edge.optimize(optimized.output, tmp_path / "again.onnx", target="std")


def test_compare_from_an_unguarded_script_fails_instead_of_hanging(tmp_path, pipeline):
    """A script without `if __name__ == "__main__":` is run again by each spawned child; the child then dies
    before reporting. The parent must say so, not wait forever."""
    folder, _, _, optimized = pipeline
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import mhe_edge, pathlib\n"
        "pathlib.Path('marker').write_text('x') if not pathlib.Path('marker').exists() else 1/0\n"
        f"mhe_edge.compare([{str(optimized.output)!r}], seq_lens=[8], runs=1, new_tokens=1)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert (
        done.returncode != 0
        and "before reporting" in done.stderr
        and 'if __name__ == "__main__":' in done.stderr
    )
