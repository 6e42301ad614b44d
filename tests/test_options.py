"""Options are declared once (mhe_edge/options.py): the API and the CLI refuse a bad value with the same
error class, exit code and message, and each bound is written in one place."""

import logging
import re
from pathlib import Path

import pytest

import mhe_edge
from mhe_edge import options
from mhe_edge.errors import RequestError
from mhe_edge.options import Option

PACKAGE = Path(mhe_edge.__file__).parent


def test_check_refuses_wrong_types_bounds_and_choices():
    count = Option("count", "How many.", 3, int, 1, 10)
    assert count.check(1) == 1 and count.check(10) == 10
    for bad in (0, 11, 2.5, True, "3", None):
        with pytest.raises(RequestError, match="--count must be"):
            count.check(bad)
    ratio = Option("ratio", "A ratio.", None, float, 0.0, 1.0)
    assert ratio.check(None) is None and ratio.check(1) == 1
    for bad in (float("nan"), float("inf"), -0.1):
        with pytest.raises(RequestError, match="--ratio must be"):
            ratio.check(bad)
    with pytest.raises(RequestError, match="one of 16, 32"):
        options.INT4_BLOCK_SIZE.check(0)
    switch = Option("switch", "On or off.", False, bool)
    assert switch.check(True) is True and switch.check(False) is False
    for bad in (1, 0, "yes", None):
        with pytest.raises(RequestError, match="--switch must be true or false"):
            switch.check(bad)


def test_a_flag_option_takes_true_or_false_only(cli, tmp_path):
    flag = options.ROPE_PAIR_TIED_EMBEDDINGS
    assert flag.check(None) is None and flag.check(True) is True and flag.check(False) is False
    for bad in (1, 0, "yes"):
        with pytest.raises(RequestError, match="--rope-pair-tied-embeddings must be true or false"):
            flag.check(bad)
    # meaningful for MHE-MUL with RoPE only: refused in one line elsewhere, alike in the API and the CLI
    with pytest.raises(mhe_edge.MheEdgeError) as api_error:
        mhe_edge.init_model(tmp_path / "m", rope_pair_tied_embeddings=True)
    result = cli("init", tmp_path / "m", "--rope-pair-tied-embeddings")
    assert result.code == api_error.value.exit_code == 2
    assert result.stderr.strip() == f"error: {api_error.value}" and "position rope" in result.stderr
    assert not (tmp_path / "m").exists()


def test_api_and_cli_refuse_int4_block_size_zero_alike(tmp_path, cli):
    with pytest.raises(RequestError) as api_error:
        mhe_edge.optimize(tmp_path / "absent.onnx", int4=True, int4_block_size=0)
    result = cli("optimize", tmp_path / "absent.onnx", "--int4", "--int4-block-size", "0")
    assert result.code == RequestError.exit_code == 2
    assert result.stderr.strip() == f"error: {api_error.value}"


def test_compare_with_no_attention_kinds_is_a_usage_error(cli):
    with pytest.raises(RequestError, match="at least one attention kind"):
        mhe_edge.compare(attentions=[])
    result = cli("compare", "--attention", "")
    assert result.code == 2 and "--attention must be one of" in result.stderr


def test_generate_refuses_a_fractional_token_budget(tmp_path):
    with pytest.raises(RequestError, match="--max-new-tokens must be an integer"):
        mhe_edge.generate(tmp_path / "absent.onnx", [1], max_new_tokens=2.5)


def test_each_bound_is_written_once():
    """The longest-sequence bound (and the batch bound) appear once in the source: everything else names it."""
    for literal in ("1_048_576", "1048576"):
        places = [
            f"{p.relative_to(PACKAGE)}:{n}"
            for p in PACKAGE.rglob("*.py")
            for n, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(rf"\b{literal}\b", line)
        ]
        assert len(places) <= 1, places
    cli_sources = "\n".join(p.read_text() for p in (PACKAGE / "cli").glob("*.py"))
    assert "min=" not in cli_sources and "max=" not in cli_sources, (
        "a CLI option declares its own bounds: declare it in mhe_edge/options.py"
    )


def test_quiet_ort_tools_leaves_other_logging_alone(caplog):
    from mhe_edge.sessions import quiet_ort_tools

    with caplog.at_level(logging.WARNING), quiet_ort_tools():
        logging.getLogger("an.application").warning("still heard")
        assert logging.root.manager.disable == 0
    assert "still heard" in caplog.text
