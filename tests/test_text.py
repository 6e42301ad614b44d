"""Text end to end: train a folder, eval it beside its exports, quality gates, generate --text (greedy,
sampled, batched, stop strings), and onnxruntime-genai text from the package."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch

import mhe_edge
from mhe_edge.errors import RequestError
from mhe_edge.text.scoring import bigram_score, score, unigram_bits_per_byte, windows
from mhe_edge.text.tokenizer import byte_tokenizer, load_tokenizer, train_bpe


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny mhe-mul decoder trained for a few seconds on the default corpus, and its exports."""
    from mhe_edge.cli import main

    root = tmp_path_factory.mktemp("trained")
    folder = root / "model"
    with pytest.raises(SystemExit) as done:
        main(
            [
                "train",
                "-o",
                str(folder),
                "--preset",
                "tiny",
                "--steps",
                "200",
                "--batch",
                "16",
                "--json",
            ]
        )
    assert done.value.code == 0
    mhe_edge.export(folder, root / "model.onnx")
    mhe_edge.optimize(root / "model.onnx", root / "model.ort.onnx", target="ort")
    return folder, root


def test_train_writes_a_model_folder_that_beats_unigram(trained):
    folder, _ = trained
    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "training.json",
        "train_log.jsonl",
        "loss.png",
        ".mhe-edge",
    ):
        assert (folder / name).is_file(), name
    record = json.loads((folder / "training.json").read_text())
    held = record["results"]["held_out"]
    assert (
        held["bits_per_byte"] < held["unigram_bits_per_byte"] - 1.0
    )  # a wide margin over a context-free model
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 200 and log[-1]["loss"] < log[0]["loss"] - 1.5 and "val_loss" in log[-1]
    config = json.loads((folder / "config.json").read_text())
    assert config["eos_token_id"] == 0 and config["vocab_size"] == load_tokenizer(folder).vocab_size


def test_eval_folder_and_exports_agree_and_show_each_step(trained, cli):
    folder, root = trained
    mhe_edge.optimize(root / "model.onnx", root / "model.fp16.onnx", fp16=True)
    mhe_edge.optimize(root / "model.onnx", root / "model.int8.onnx", target="ort", int8=True)
    result = cli(
        "eval",
        folder,
        root / "model.onnx",
        root / "model.ort.onnx",
        root / "model.fp16.onnx",
        root / "model.int8.onnx",
        "--json",
    )
    assert result.code == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [r["runtime"] for r in rows] == ["pytorch"] + ["onnxruntime"] * 4
    assert len({r["tokens"] for r in rows}) == 1  # identical windows
    assert (
        abs(rows[1]["bits_per_byte_change"]) <= 1e-3
        and abs(rows[2]["bits_per_byte_change"]) <= 1e-3
    )
    assert [r["precision"] for r in rows[3:]] == ["fp16", "int8"]
    assert all(
        abs(r["bits_per_byte_change"]) < 0.02 for r in rows
    )  # the lossy rows cost little on a trained model
    # the unigram baseline is the text's own byte entropy, recomputed here
    report = json.loads(result.stdout)
    assert report["unigram_bits_per_byte"] > rows[0]["bits_per_byte"] + 1.0


def test_quality_gate_refuses_beyond_threshold_and_writes_when_allowed(trained, cli, tmp_path):
    from mhe_edge.errors import ParityError
    from mhe_edge.files import read_header
    from mhe_edge.sessions import create_session
    from mhe_edge.text.quality import quality_gate

    _, root = trained
    header = read_header(root / "model.onnx")
    # a candidate that really is worse: the same shape with untrained weights
    untrained = mhe_edge.models.build_model(header.config, seed=1)
    mhe_edge.export(untrained, tmp_path / "untrained.onnx")
    gate = quality_gate("int8", header.config, header.metadata)
    base, worse = (
        gate.score(create_session(path))
        for path in (root / "model.onnx", tmp_path / "untrained.onnx")
    )
    with pytest.raises(ParityError, match="bits per byte"):
        gate.verdict(base, worse, allow_loss=False)
    allowed = gate.verdict(base, worse, allow_loss=True)
    assert allowed.judged and allowed.change > 0.5
    # through the CLI: the measured change is reported and nothing is written when refused
    out = root / "gated.onnx"
    result = cli("optimize", root / "model.onnx", "-o", out, "--int8", "--json")
    assert result.code == 0 and out.exists()
    quality = json.loads(result.stdout)["quality"]
    assert (
        quality["judged"]
        and abs(quality["bits_per_byte_change"]) < 0.02
        and quality["threshold"] == 0.02
    )
    change = quality["bits_per_byte_change"]
    if (
        change > 0
    ):  # int8 happened to cost something: a threshold below it refuses, and writes nothing
        refused = cli(
            "optimize",
            root / "model.onnx",
            "-o",
            root / "refused.onnx",
            "--int8",
            "--max-quality-loss",
            f"{change / 2}",
        )
        assert (
            refused.code == 6
            and "bits per byte" in refused.stderr
            and not (root / "refused.onnx").exists()
        )


def test_random_weights_say_quality_cannot_be_judged(tmp_path, cli):
    model = mhe_edge.init_model(tmp_path / "r.pt")
    mhe_edge.export(model.path, tmp_path / "r.onnx")
    result = cli("optimize", tmp_path / "r.onnx", "--int8")
    assert (
        result.code == 0 and "cannot be judged" in result.stdout and "argmax" not in result.stdout
    )
    refused = cli("generate", tmp_path / "r.onnx", "--text", "hello")
    assert refused.code == 2 and "no tokenizer" in refused.stderr


def test_generate_text_equals_pytorch_and_batches_equal_each_prompt(trained, cli):
    folder, root = trained
    tokenizer = load_tokenizer(folder)
    model = mhe_edge.load_model(folder)
    prompts = ["The ", "A function definition", "x"]
    report = mhe_edge.generate_text(root / "model.ort.onnx", prompts, max_new_tokens=20)
    for prompt, generation in zip(prompts, report.generations):
        ids = torch.tensor([tokenizer.encode(prompt)])
        want = model.generate(ids, 20)[0].tolist()
        if 0 in want:
            want = want[: want.index(0) + 1]
        assert generation.tokens == want  # ONNX Runtime (GQA, padded batch) = PyTorch, prompt alone
        assert generation.text == tokenizer.decode(want)
    result = cli(
        "generate",
        root / "model.onnx",
        "--text",
        "The ",
        "--text",
        "x",
        "--max-new-tokens",
        "8",
        "--json",
    )
    items = json.loads(result.stdout)["generations"]
    assert len(items) == 2 and set(items[0]) == {"prompt", "text", "tokens", "stopped_by"}
    single = cli(
        "generate", root / "model.onnx", "--text", "The ", "--max-new-tokens", "8", "--json"
    )
    # --json is exactly the API's record
    report = mhe_edge.generate_text(root / "model.onnx", "The ", max_new_tokens=8)
    assert json.loads(single.stdout) == report.to_dict()
    assert report.generations[0].tokens == items[0]["tokens"]


def test_sampling_repeats_with_a_seed_and_stop_strings_cut(trained, cli):
    _, root = trained
    args = [
        "generate",
        root / "model.onnx",
        "--text",
        "The ",
        "--temperature",
        "1.0",
        "--top-k",
        "50",
        "--top-p",
        "0.95",
        "--max-new-tokens",
        "24",
        "--json",
    ]

    def generation(*more):  # the one prompt's record in the report --json prints
        return json.loads(cli(*args, *more).stdout)["generations"][0]

    first, second = (generation("--seed", "5") for _ in range(2))
    other = generation("--seed", "6")
    assert first == second and first["tokens"] != other["tokens"]
    stop = first["text"][3:5]
    cut = generation("--seed", "5", "--stop", stop)
    assert (
        cut["stopped_by"] == "stop"
        and stop not in cut["text"]
        and first["text"].startswith(cut["text"])
    )


@pytest.mark.parametrize("temperature", ["1e-30", "5e-324", "100", "1e30", "inf", "nan", "-1"])
def test_extreme_temperatures_sample_or_are_refused_in_one_line(trained, cli, temperature):
    _, root = trained
    done = cli(
        "generate", root / "model.onnx", "--text", "The ", "--max-new-tokens", "6",
        "--temperature", temperature, "--seed", "3", "--json",
    )  # fmt: skip
    if not 0 <= float(temperature) <= 100:  # NaN too
        assert done.code == 2 and "--temperature" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        return
    assert done.code == 0, done.stderr
    generation = json.loads(done.stdout)["generations"][0]
    assert len(generation["tokens"]) == 6 or generation["stopped_by"] != "length"
    if float(temperature) < 1e-20:  # so cold that sampling is greedy
        greedy = cli("generate", root / "model.onnx", "--text", "The ", "--max-new-tokens", "6")
        assert greedy.code == 0 and generation["text"] in greedy.stdout, greedy.stdout


def test_genai_package_text_equals_generate_text(trained):
    pytest.importorskip("onnxruntime_genai")
    from mhe_edge.edge.genai import genai_text

    _, root = trained
    report = mhe_edge.package(root / "model.ort.onnx", root / "genai")
    assert report.check["text"]["status"] == "passed"
    for prompt in (
        "The ",
        "import os\n",
    ):  # og.Tokenizer + og.Generator against ours, outside the package check too
        ids, text = genai_text(root / "genai", prompt, 16)
        assert (
            text
            == mhe_edge.generate_text(root / "model.ort.onnx", prompt, max_new_tokens=16)
            .generations[0]
            .text
        )


def test_resume_continues_a_run_and_user_text_is_recorded_without_its_path(tmp_path, cli):
    private = tmp_path / "private-place-7c1f"
    private.mkdir()
    text = private / "notes.txt"
    text.write_text(
        "".join(
            f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}\n" for i in range(400)
        )
    )
    folder = tmp_path / "run"
    small = ["--layers", "1", "--d-model", "32", "--heads", "2", "--d-ff", "64"]
    first = cli(
        "train", text, "-o", folder, "--tokenizer", "bytes", "--steps", "20", "--batch", "4",
        "--seq-len", "32", *small,
    )  # fmt: skip
    assert first.code == 0, first.stderr
    # the text is recorded by name and sha256, never by path: a resumed run is given it again (moved: fine)
    unnamed = cli("train", "-o", folder, "--resume", "--steps", "30")
    assert unnamed.code == 2 and "notes.txt" in unnamed.stderr and "as TEXT" in unnamed.stderr
    moved = tmp_path / "moved.txt"
    moved.write_bytes(text.read_bytes())
    resumed = cli("train", moved, "-o", folder, "--resume", "--steps", "30", "--json")
    assert resumed.code == 0, resumed.stderr and json.loads(resumed.stdout)["steps"] == 30
    record = json.loads((folder / "training.json").read_text())
    assert record["corpus"]["sources"][0] == {
        "name": "notes.txt",
        "bytes": text.stat().st_size,
        "sha256": hashlib.sha256(text.read_bytes()).hexdigest(),
    }
    assert record["results"]["steps"] == 30
    _nothing_written_names(private, folder, cli)
    assert cli("eval", folder).code == 2  # which file it was is the user's to say
    held = cli("eval", folder, "--text", moved, "--json")
    assert held.code == 0, held.stderr
    assert json.loads(held.stdout)["text"] == "held-out split of moved.txt"
    assert json.loads(held.stdout)["bytes"] < text.stat().st_size * 0.06  # the tail alone
    text.write_text("changed " * 400)  # same name, other content: refused on resume, whole on eval
    changed = cli("train", text, "-o", folder, "--resume", "--steps", "40")
    assert changed.code == 2 and "TEXT" in changed.stderr, changed.stderr
    whole = cli("eval", folder, "--text", text, "--json")
    assert whole.code == 0 and json.loads(whole.stdout)["text"] == "notes.txt"


def _nothing_written_names(private, run, cli):
    """No file that train, export, package (genai, transformers-js) or to-ort writes holds the text's folder."""
    out = run.parent / "made"
    out.mkdir()
    steps = [
        ["export", run, "-o", out / "m.onnx"],
        ["package", out / "m.onnx", "--format", "genai", "-o", out / "genai"],
        ["package", out / "m.onnx", "--format", "transformers-js", "-o", out / "tjs"],
        ["to-ort", out / "m.onnx", "-o", out / "m.ort"],
    ]
    for args in steps:
        done = cli(*args)
        assert done.code == 0, (args[0], done.stderr)
    needles = [str(private).encode(), str(private.resolve()).encode(), private.name.encode()]
    written = [p for root in (run, out) for p in sorted(root.rglob("*")) if p.is_file()]
    assert len(written) >= 10 and any(p.name == "training.json" for p in written)
    for path in written:
        data = path.read_bytes()
        assert not any(needle in data for needle in needles), f"{path.name} holds the text's folder"


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["train", "missing.txt", "-o", "{tmp}/m"], "does not exist"),
        (["train", "{tmp}/latin1.txt", "-o", "{tmp}/m"], "not UTF-8"),
        (["train", "-o", "{tmp}/fresh", "--resume"], "not a training run folder"),
        (["train", "-o", "{tmp}/m", "--tokenizer", "{tmp}/latin1.txt"], "tokenizer"),
        (["eval", "{tmp}"], "no tokenizer.json"),
        (["generate", "{tmp}/none.onnx", "--text", "a", "--prompt", "1"], "either --text"),
    ],
)
def test_text_commands_refuse_bad_input(tmp_path, cli, args, fragment):
    (tmp_path / "latin1.txt").write_bytes("café ".encode("latin-1") * 1000)
    result = cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.code in (2, 3), result.stderr
    assert (
        fragment in result.stderr
        and "Traceback" not in result.stderr
        and len(result.stderr.strip().splitlines()) == 1
    )


def test_tokenizers_round_trip_and_scoring_windows():
    text = "héllo wörld\n\n  tabs\tand 漢字 <|endoftext|>"
    for tokenizer in (byte_tokenizer(), train_bpe(["hello world " * 50, text], 300)):
        assert tokenizer.decode(tokenizer.encode(text)) == text.replace("<|endoftext|>", "")
    parts = windows(list(range(1, 11)), 0, 4)
    assert [p.tolist() for p in parts] == [
        [0, 1, 2, 3, 4],
        [4, 5, 6, 7, 8],
        [8, 9, 10],
    ]  # each id predicted once
    uniform = score(lambda ids: np.zeros((*ids.shape, 16)), list(range(1, 11)), 20, 0, 4, batch=2)
    assert math.isclose(uniform.bits_per_byte, 10 * math.log2(16) / 20)
    assert math.isclose(unigram_bits_per_byte("abab"), 1.0)
    repetitive = [1, 2, 3] * 200
    assert (
        bigram_score(repetitive, [1, 2, 3] * 10, 30, 3, 4).bits_per_byte < 0.2
    )  # a bigram model learns a cycle


def test_int4_is_small_generates_and_reports_its_quality(trained, cli):
    _, root = trained
    result = cli(
        "optimize",
        root / "model.onnx",
        "-o",
        root / "model.int4.onnx",
        "--target",
        "ort",
        "--int4",
        "--json",
    )
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    fp32 = (root / "model.ort.onnx").stat().st_size
    assert report["bytes"]["after"] <= 0.35 * fp32
    assert report["op_counts"]["after"].get("com.microsoft.MatMulNBits", 0) > 0
    quality = report["quality"]
    assert quality["judged"] and 0 <= quality["bits_per_byte_change"] < 0.1
    text = mhe_edge.generate_text(root / "model.int4.onnx", "The ", max_new_tokens=8).generations[0]
    assert len(text.tokens) > 0
    refused = cli(
        "optimize", root / "model.onnx", "-o", root / "p.onnx", "--target", "portable", "--int4"
    )
    assert refused.code == 2 and "MatMulNBits" in refused.stderr


@pytest.mark.parametrize("algorithm", ["hqq", "k-quant", "gptq"])
def test_int4_algorithms_are_judged_on_text(trained, cli, algorithm):
    from pydoc_data.topics import topics

    _, root = trained
    out = root / f"model.int4-{algorithm}.onnx"
    calibration = root / "calibration.txt"  # the head of a training document, not held-out text
    calibration.write_text(topics["specialnames"][:4000])
    extra = ["--int4-calibration-text", calibration] if algorithm == "gptq" else []
    result = cli(
        "optimize",
        root / "model.onnx",
        "-o",
        out,
        "--target",
        "ort",
        "--int4",
        "--int4-algorithm",
        algorithm,
        "--int4-block-size",
        "32",
        "--int4-accuracy-level",
        "4",
        *extra,
        "--json",
    )
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)  # stdout is the JSON alone: no quantizer progress bars
    assert report["op_counts"]["after"].get("com.microsoft.MatMulNBits", 0) > 0
    quality = report["quality"]
    assert quality["judged"] and 0 <= quality["bits_per_byte_change"] < 0.1


def test_a_foreign_tokenizer_does_not_stop_an_export(tmp_path):
    """A folder from elsewhere may hold a tokenizer.json mhe-edge cannot drive (no <|endoftext|>): the model
    still exports, without text support; asked for explicitly, the same tokenizer is refused."""
    from tokenizers import Tokenizer, models

    from mhe_edge.contract import KEY_TOKENIZER
    from mhe_edge.errors import CheckpointError
    from mhe_edge.files import read_header

    mhe_edge.init_model(tmp_path / "folder", preset="tiny")
    Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>")).save(
        str(tmp_path / "folder" / "tokenizer.json")
    )
    mhe_edge.export(tmp_path / "folder", tmp_path / "m.onnx")
    assert KEY_TOKENIZER not in read_header(tmp_path / "m.onnx").metadata
    with pytest.raises(CheckpointError, match="endoftext"):
        mhe_edge.export(tmp_path / "folder", tmp_path / "n.onnx", tokenizer=tmp_path / "folder")


def _word_level_tokenizer():
    """A tokenizer with an unknown-token fallback: text outside its words does not survive it."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from mhe_edge.text.tokenizer import TextTokenizer

    vocab = {"<|endoftext|>": 0, "[UNK]": 1, "the": 2, "module": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return TextTokenizer(backend)


def test_text_a_tokenizer_cannot_encode_is_refused_not_scored():
    tokenizer = _word_level_tokenizer()
    assert tokenizer.encode_exactly("the module", "the text") == [2, 3]
    with pytest.raises(RequestError, match="'q' at character 4 does not encode"):
        tokenizer.encode_exactly("the quick module", "the text")


def test_generate_refuses_prompts_that_are_not_text(trained, cli):
    _, root = trained
    with pytest.raises(RequestError, match="prompt 1 is not UTF-8 text"):
        mhe_edge.generate_text(root / "model.onnx", "caf\udce9")


# the child's peak: VmHWM reset first (getrusage's ru_maxrss keeps the forking parent's peak across exec)
ENCODE_IN_A_CHILD = """
import sys
import numpy as np
from mhe_edge.runtime.memory import peak_rss_bytes, reset_peak_rss
from mhe_edge.text.tokenizer import load_tokenizer
text, tokenizer = open(sys.argv[1]).read(), load_tokenizer(sys.argv[2])
assert reset_peak_rss()
before = peak_rss_bytes()
if sys.argv[3] == "pieces":
    ids = tokenizer.ids_exactly(text, "the text")
else:
    ids = np.asarray(tokenizer.backend.encode(text, add_special_tokens=False).ids)
np.save(sys.argv[4], ids)
print(peak_rss_bytes() - before)
"""


def test_one_long_line_is_tokenized_in_bounded_memory_to_the_same_ids(tmp_path):
    """A 1 MB line: encoded in pieces, the ids are those of the whole line, and the peak grows by a
    fraction of what encoding it whole costs (tokenizers keeps ~300 bytes per id while it encodes)."""
    import pydoc_data.topics
    import random
    import subprocess
    import sys

    words = " ".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)).split()
    rng = random.Random(0)
    line = " ".join(rng.choice(words) for _ in range(170_000))[:1_000_000]
    (tmp_path / "line.txt").write_text(line)
    byte_tokenizer().backend.save(str(tmp_path / "bytes.json"))
    grown = {}
    for how in ("pieces", "whole"):
        done = subprocess.run(
            [sys.executable, "-c", ENCODE_IN_A_CHILD, tmp_path / "line.txt", tmp_path / "bytes.json",
             how, tmp_path / f"{how}.npy"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        grown[how] = int(done.stdout)
    assert np.array_equal(np.load(tmp_path / "pieces.npy"), np.load(tmp_path / "whole.npy"))
    assert grown["pieces"] < 80 << 20 and grown["pieces"] * 3 < grown["whole"], grown
    bpe, part = train_bpe([line[:100_000]], 400), line[:300_000]  # BPE merges across no cut either
    assert bpe.encode_array(part).tolist() == bpe.backend.encode(part).ids
