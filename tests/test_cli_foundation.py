import json

import pytest

import mhe_edge


def test_version(cli):
    result = cli("--version")
    assert result.code == 0 and result.stdout.strip() == f"mhe-edge {mhe_edge.__version__}"


@pytest.mark.parametrize("command", ["init", "inspect"])
def test_help_has_an_example(cli, command):
    result = cli(command, "--help")
    assert result.code == 0 and "Example" in result.stdout


def test_init_then_inspect_json(cli, tmp_path):
    path = tmp_path / "m.safetensors"
    result = cli(
        "init",
        path,
        "--attention",
        "gqa",
        "--heads",
        "6",
        "--d-model",
        "48",
        "--kv-heads",
        "3",
        "--json",
    )
    assert result.code == 0, result.stderr
    report = json.loads(cli("inspect", path, "--json").stdout)
    assert report["config"]["n_kv_heads"] == 3 and report["config"]["n_heads"] == 6
    assert report["parameters"]["total"] == report["stored_parameters"]
    assert report["kv_cache_bytes_per_token"] == 2 * 2 * 3 * 8 * 4
    assert {"total", "attention", "mlp", "embeddings", "norms"} <= set(report["parameters"])


def test_init_is_deterministic_per_seed(cli, tmp_path):
    for name in ("a.pt", "b.pt"):
        assert cli("init", tmp_path / name, "--seed", "3").code == 0
    a, b = mhe_edge.load_model(tmp_path / "a.pt"), mhe_edge.load_model(tmp_path / "b.pt")
    assert all((x == y).all() for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--heads", "5"], "not divisible by n_heads"),
        (["--attention", "gqa", "--kv-heads", "3"], "not divisible by n_kv_heads"),
        (["--attention", "mla"], "attention must be one of"),
        (["--preset", "huge"], "--preset must be one of"),
        (["--layers", "0"], "--layers must be 1 to 1,024, not 0"),
    ],
)
def test_init_refuses_bad_configs(cli, tmp_path, args, fragment):
    path = tmp_path / "m.pt"
    result = cli("init", path, *args)
    assert result.code == 2 and fragment in result.stderr and "Traceback" not in result.stderr
    assert not path.exists()


def test_init_refuses_missing_folder_and_existing_file(cli, tmp_path):
    assert "does not exist" in cli("init", tmp_path / "nope" / "m.pt").stderr
    (tmp_path / "m.pt").write_text("keep me")
    result = cli("init", tmp_path / "m.pt")
    assert result.code == 2 and "--force" in result.stderr
    assert (tmp_path / "m.pt").read_text() == "keep me"
    assert cli("init", tmp_path / "m.pt", "--force").code == 0
