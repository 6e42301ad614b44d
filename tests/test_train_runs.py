"""The `train` run folder: --resume continues only the recorded run, --force replaces only a whole new run,
refusals leave nothing behind, and a damaged or poisoned run is refused at load."""

import json
import pydoc_data.topics
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mhe_edge.errors import CheckpointError, RequestError, TrainingInterrupted
from mhe_edge.training.loop import TrainOptions, run_training
from mhe_edge.training.workflow import train

SHAPE = dict(n_layers=1, d_model=32, n_heads=4, d_ff=64, max_seq_len=32)
OPTIONS = dict(steps=3, batch=2, seq_len=16, eval_every=1000)


def _text(folder: Path, name="notes.txt", chars=12_000) -> Path:
    topics = pydoc_data.topics.topics
    text = "".join(topics[k] for k in sorted(topics))[:chars]
    path = folder / name
    path.write_text(text)
    return path


def _run(tmp_path, name="run", **options):
    text = _text(tmp_path)
    train(tmp_path / name, [text], tokenizer="bytes", options={**OPTIONS, **options}, **SHAPE)
    return tmp_path / name, text


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_resume_refuses_changed_options_and_continues_with_more_steps(tmp_path, cli):
    run, text = _run(tmp_path)
    before = _snapshot(run)
    for args, named in [
        (["--lr", "0.001"], "--lr"),
        (["--batch", "3"], "--batch"),
        (["--seq-len", "8"], "--seq-len"),
        (["--layers", "2"], "--layers"),
        (["--attention", "mha"], "--attention"),
        (["--tokenizer", "bpe"], "--tokenizer"),
        (["--seed", "1"], "--seed"),
        (["--rope-pair-tied-embeddings"], "--rope-pair-tied-embeddings"),
    ]:
        result = cli("train", text, "-o", run, "--resume", "--steps", "5", *args)
        assert result.code == 2, (args, result.stderr)
        assert named in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "--steps" not in result.stderr.split(":")[0]  # the budget is never the complaint
    other = _text(tmp_path, "other.txt", chars=13_000)
    result = cli("train", other, "-o", run, "--resume", "--steps", "5")
    assert result.code == 2 and "TEXT" in result.stderr
    assert _snapshot(run) == before  # refusals touched nothing
    # the same values as recorded (and the same text) are not changes; more steps continue the run
    result = cli(
        "train", text, "-o", run, "--resume", "--steps", "5", "--batch", "2", "--layers", "1",
        "--tokenizer", "bytes", "--no-rope-pair-tied-embeddings", "--threads", "1", "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["steps"] == 5


def test_api_resume_with_full_options_checks_every_field(tmp_path):
    run, text = _run(tmp_path)
    with pytest.raises(RequestError, match="--lr"):
        train(run, [text], resume=True, options=TrainOptions(steps=5, batch=2, seq_len=16, lr=1e-3))
    with pytest.raises(RequestError, match="--eval-every"):  # every result-changing field counts
        train(run, [text], resume=True, options=TrainOptions(steps=5, batch=2, seq_len=16))
    report = train(run, [text], resume=True, options={"steps": 4})
    assert report.steps == 4


def test_a_record_older_than_a_config_field_holds_its_default():
    """A run recorded before a config field existed was trained with the field's default: asking for the
    default continues it, asking for anything else is refused by flag."""
    import dataclasses

    from mhe_edge.training.record import resumed_options

    record = {"options": dataclasses.asdict(TrainOptions(steps=3)), "config": {}, "corpus": {}}
    kept = resumed_options(record, "run", {"rope_pair_tied_embeddings": False, "steps": 5}, None)
    assert kept.steps == 5
    with pytest.raises(RequestError, match=r"--rope-pair-tied-embeddings \(recorded: False\)"):
        resumed_options(record, "run", {"rope_pair_tied_embeddings": True}, None)


def test_resume_may_split_the_recorded_rows_differently(tmp_path, cli):
    run, text = _run(tmp_path)  # batch 2: two rows per step
    result = cli("train", text, "-o", run, "--resume", "--steps", "5", "--grad-accum", "3")
    assert result.code == 2 and "rows per step" in result.stderr
    report = train(run, [text], resume=True, options={"steps": 4, "batch": 1})  # 1 x grad-accum 2
    assert report.steps == 4 and report.tokens_trained == 4 * 2 * 16
    assert json.loads((run / "training.json").read_text())["options"]["grad_accum"] == 2


def test_fsdp_in_one_process_is_refused_before_anything_is_written(tmp_path, cli):
    """--fsdp shards across torchrun's processes: in one there is nothing to shard, and it says so."""
    run, _ = _run(tmp_path)
    before = _snapshot(run)
    for args in (["-o", tmp_path / "new"], ["-o", run, "--resume", "--steps", "5"]):
        result = cli("train", *args, "--fsdp", "--tokenizer", "bytes")
        assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "--fsdp" in result.stderr and "torchrun" in result.stderr
    assert _snapshot(run) == before and not (tmp_path / "new").exists()
    with pytest.raises(RequestError, match="--fsdp must be true or false"):
        train(tmp_path / "new", options={"fsdp": 1})
    with pytest.raises(RequestError, match="torchrun"):
        run_training(None, None, None, TrainOptions(fsdp=True), tmp_path)


def test_resume_keeps_fsdp_while_there_are_processes_unless_told(tmp_path):
    """Sharding changes no result: a resumed run may take it up or drop it; unasked it keeps the
    recorded choice under torchrun and trains whole in one process."""
    from mhe_edge.training.record import resumed_options

    run, _ = _run(tmp_path)
    record = json.loads((run / "training.json").read_text())
    record["processes"] = 2
    for recorded, requested, processes, expected in [
        (True, {}, 2, True),
        (True, {}, 1, False),
        (True, {"fsdp": False}, 2, False),
        (False, {"fsdp": True}, 2, True),
        (False, {}, 2, False),
    ]:
        record["options"]["fsdp"] = recorded
        resumed = resumed_options(record, "training.json", requested, None, processes)
        assert resumed.fsdp is expected, (recorded, requested, processes)
        assert resumed.batch * resumed.grad_accum * processes == 4  # the recorded rows per step


def test_bad_options_are_usage_errors_in_the_api_as_in_the_cli(tmp_path, cli):
    for bad in (dict(batch=0), dict(lr=0.0), dict(seq_len=1), dict(steps=0), dict(batch=True)):
        with pytest.raises(RequestError):
            train(tmp_path / "run", options=TrainOptions(**bad))
        with pytest.raises(RequestError):
            run_training(None, None, None, TrainOptions(**bad), tmp_path)
    assert cli("train", "-o", tmp_path / "run", "--batch", "0").code == 2
    # a config option the model cannot have: refused before any text is read, in one line
    result = cli("train", "-o", tmp_path / "run", "--rope-pair-tied-embeddings")
    assert result.code == 2 and "needs attention mhe-mul and position rope" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(RequestError, match="unknown training option"):
        train(tmp_path / "run", options={"bach": 2})
    assert list(tmp_path.iterdir()) == []


def test_refusals_leave_nothing_and_outputs_never_hold_inputs(tmp_path, cli):
    text = _text(tmp_path)
    # refused after the text and tokenizer were read: still nothing created
    result = cli("train", text, "-o", tmp_path / "new", "--tokenizer", "bytes", "--seq-len", "4096")
    assert result.code == 2 and "max_seq_len" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    run, _ = _run(tmp_path)
    notes = run / "notes.txt"
    notes.write_text(text.read_text())
    before = _snapshot(run)
    result = cli("train", notes, "-o", run, "--force", "--tokenizer", "bytes", "--steps", "2")
    assert result.code == 2 and "input" in result.stderr
    assert _snapshot(run) == before
    (tmp_path / "link").symlink_to(run)
    result = cli("train", "-o", tmp_path / "link", "--resume", "--steps", "5")
    assert result.code == 2 and "symbolic link" in result.stderr
    assert _snapshot(run) == before


def test_a_refused_force_leaves_the_old_run_byte_identical(tmp_path, cli):
    run, text = _run(tmp_path)
    before = _snapshot(run)
    result = cli("train", text, "-o", run, "--force", "--tokenizer", "bytes", "--seq-len", "4096")
    assert result.code == 2
    assert _snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "run"]  # no staging left


def test_force_replaces_the_run_once_it_is_whole(tmp_path):
    run, text = _run(tmp_path)
    old_weights = (run / "model.safetensors").read_bytes()
    report = train(
        run, [text], tokenizer="bytes", options={**OPTIONS, "seed": 5}, force=True, **SHAPE
    )
    assert report.path == str(run)
    assert (run / "model.safetensors").read_bytes() != old_weights
    assert json.loads((run / "training.json").read_text())["options"]["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "run"]


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_an_interrupted_force_leaves_the_old_run_byte_identical(tmp_path, signal_name):
    run, text = _run(tmp_path)
    before = _snapshot(run)
    process = subprocess.Popen(
        [sys.executable, "-m", "mhe_edge", "train", text, "-o", run, "--force", "--tokenizer",
         "bytes", "--steps", "1000000", "--batch", "2", "--seq-len", "16", "--layers", "1",
         "--d-model", "32"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if list(tmp_path.glob(".run.*.staging/run/training.json")):  # the new run is staged
            time.sleep(1.5)  # and trains
            process.send_signal(getattr(signal, signal_name))
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"training ended or hung before its first checkpoint: {process.stderr.read()}")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "nothing was written" in stderr and "as it was" in stderr and "Traceback" not in stderr
    assert _snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "run"]


def test_interrupted_before_a_checkpoint_says_so_and_after_one_resumes(tmp_path):
    from mhe_edge.config import preset_config
    from mhe_edge.models import build_model

    model = build_model(preset_config("tiny", vocab_size=64, **SHAPE), seed=0)

    def ctrl_c(module, args):
        raise KeyboardInterrupt

    hook = model.register_forward_pre_hook(ctrl_c)  # Ctrl-C inside the first step
    ids = torch.randint(1, 64, (2000,)).numpy()
    with pytest.raises(TrainingInterrupted) as caught:
        run_training(model, ids, ids[:100], TrainOptions(**OPTIONS), tmp_path)
    assert "before any checkpoint" in str(caught.value) and "saved in" not in str(caught.value)
    assert not (tmp_path / "checkpoints").exists()
    hook.remove()
    # a new run interrupted after its first step: it appears, resumable (nothing was there before)
    text = _text(tmp_path)

    def stop(info):
        raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="checkpoint of step 1 is saved"):
        train(tmp_path / "run", [text], tokenizer="bytes", options=OPTIONS, on_step=stop, **SHAPE)
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-1"
    assert train(tmp_path / "run", [text], resume=True).steps == 3


def test_non_finite_or_damaged_state_is_refused_at_load(tmp_path, cli):
    from safetensors.torch import load_file, save_file

    run, text = _run(tmp_path)
    checkpoint = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    for file in ("model.safetensors", "optimizer.safetensors"):
        original = (checkpoint / file).read_bytes()
        tensors = load_file(str(checkpoint / file))
        name = sorted(tensors)[0]
        tensors[name] = tensors[name].clone().fill_(float("nan"))
        save_file(tensors, str(checkpoint / file))
        result = cli("train", text, "-o", run, "--resume", "--steps", "6")
        assert result.code == CheckpointError.exit_code and "non-finite" in result.stderr, file
        (checkpoint / file).write_bytes(original)
    state = json.loads((checkpoint / "state.json").read_text())
    for damage in ({"step": "3"}, {"log": 7}, {"elapsed": -1}):
        (checkpoint / "state.json").write_text(json.dumps({**state, **damage}))
        result = cli("train", text, "-o", run, "--resume", "--steps", "6")
        assert (
            result.code == 3 and "state.json" in result.stderr and "Traceback" not in result.stderr
        )
    (checkpoint / "state.json").write_text(json.dumps(state))
    record = json.loads((run / "training.json").read_text())
    damaged = {
        "[1, 2]": (["train", text, "-o", run, "--resume", "--steps", "6"], ["eval", run]),
        json.dumps({**record, "options": {**record["options"], "batch": "x"}}): (
            ["train", text, "-o", run, "--resume", "--steps", "6"],
        ),
    }
    for damage, commands in damaged.items():
        (run / "training.json").write_text(damage)
        for args in commands:
            result = cli(*args)
            assert result.code == 3 and "training.json" in result.stderr, (args, result.stderr)


def test_a_run_larger_than_memory_is_refused_before_anything_is_built(tmp_path, cli):
    import time

    text = _text(tmp_path)
    huge = ["--d-model", "65536", "--heads", "16", "--layers", "1024", "--d-ff", "262144"]
    started = time.monotonic()
    result = cli("train", text, "-o", tmp_path / "huge", "--tokenizer", "bytes", *huge)
    assert time.monotonic() - started < 5
    assert result.code == 2 and "needs about" in result.stderr and "available" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "huge").exists()
    # a record edited to claim a huge model: refused on resume from the record, before the model is built
    run, _ = _run(tmp_path)
    record = json.loads((run / "training.json").read_text())
    record["config"].update(d_model=65536, n_heads=16, n_layers=1024, d_ff=262144)
    (run / "training.json").write_text(json.dumps(record))
    started = time.monotonic()
    result = cli("train", text, "-o", run, "--resume", "--steps", "5")
    assert time.monotonic() - started < 5
    assert result.code == 2 and "needs about" in result.stderr, result.stderr
