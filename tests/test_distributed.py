"""Training in two processes (torchrun, DDP over gloo on the CPU) ends where one process at the combined
batch ends, rank 0 alone reports and writes, and the run resumes in one process."""

import json
import pydoc_data.topics
import subprocess
import sys

import torch
from safetensors.torch import load_file

from mhe_edge.training.workflow import train

SHAPE = ["--layers", "1", "--d-model", "32", "--heads", "4", "--no-bias", "--max-seq-len", "32"]
# no biases: a K bias gets no true gradient (softmax drops it), and AdamW turns its rounding noise into
# steps of size lr, so it would differ between any two summation orders


def _close(a, b, atol=1e-4):
    first, second = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=atol, rtol=0, msg=name)


def test_two_processes_equal_one_at_twice_the_batch_and_resume_in_one(tmp_path):
    topics = pydoc_data.topics.topics
    text = tmp_path / "notes.txt"
    text.write_text("".join(topics[k] for k in sorted(topics))[:20_000])
    common = [text, "--tokenizer", "bytes", "--attention", "mhe-add", "--seq-len", "16", *SHAPE]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    done = subprocess.run(
        [*command, "-m", "mhe_edge", "train", *map(str, common), "-o", str(tmp_path / "two"),
         "--batch", "4", "--steps", "6", "--json"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["tokens_trained"] == 6 * 8 * 16  # rank 0 alone
    record = json.loads((tmp_path / "two" / "training.json").read_text())
    assert record["processes"] == 2 and record["options"]["batch"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt",
        "two",
    ]  # one writer, no staging

    shape = dict(n_layers=1, d_model=32, n_heads=4, qkv_bias=False, out_bias=False, mlp_bias=False)
    options = dict(steps=6, batch=8, seq_len=16)
    train(tmp_path / "one", [text], attention="mhe-add", tokenizer="bytes", options=options,
          max_seq_len=32, **shape)  # fmt: skip
    _close(tmp_path / "one", tmp_path / "two")

    # the 2-process run continues in one process: the same 8 rows per step, as batch 4 x grad-accum 2
    resumed = train(tmp_path / "two", resume=True, options={"steps": 8})
    assert resumed.steps == 8
    assert (
        json.loads((tmp_path / "two" / "training.json").read_text())["options"]["grad_accum"] == 2
    )
    train(tmp_path / "one", resume=True, options={"steps": 8})
    _close(tmp_path / "one", tmp_path / "two")


def test_uptraining_in_two_processes_equals_one_at_twice_the_batch(tmp_path):
    """A teacher's KL and a freeze under DDP: 2 processes x batch 4 end where one process at batch 8 ends
    (the KL averaged across processes as the loss is; the frozen gradients dropped after the all-reduce)."""
    topics = pydoc_data.topics.topics
    text = tmp_path / "notes.txt"
    text.write_text("".join(topics[k] for k in sorted(topics))[:20_000])
    shape = dict(n_layers=1, d_model=32, n_heads=4, qkv_bias=False, out_bias=False, mlp_bias=False)
    for name, attention, seed in (("start", "mhe-add", 1), ("teacher", "mha", 2)):
        options = dict(steps=1, batch=2, seq_len=16, seed=seed)
        train(tmp_path / name, [text], attention=attention, tokenizer="bytes", options=options,
              max_seq_len=32, **shape)  # fmt: skip
    uptraining = ["--init-from", tmp_path / "start", "--teacher", tmp_path / "teacher"]
    common = [text, *uptraining, "--freeze-steps", "2", "--seq-len", "16", "--steps", "4"]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    done = subprocess.run(
        [*command, "-m", "mhe_edge", "train", *map(str, common), "-o", str(tmp_path / "two"),
         "--batch", "4", "--json"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    one = train(tmp_path / "one", [text], init_from=tmp_path / "start", teacher=tmp_path / "teacher",
                options=dict(steps=4, batch=8, seq_len=16, freeze_steps=2))  # fmt: skip
    two = json.loads(done.stdout.strip().splitlines()[-1])
    assert abs(one.held_out["cross_entropy"] - two["held_out"]["cross_entropy"]) < 1e-4
    _close(tmp_path / "one", tmp_path / "two")
    start = load_file(str(tmp_path / "start" / "model.safetensors"))
    end = load_file(str(tmp_path / "one" / "model.safetensors"))
    assert any(
        not torch.equal(start[k], end[k]) for k in start if "attn" not in k
    )  # after the freeze
