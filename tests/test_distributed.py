"""Training in two processes (torchrun over gloo on the CPU; DDP, or FSDP2 with --fsdp) ends where one
process at the combined batch ends, rank 0 alone reports and writes, and the run resumes in one process or
in two, with or without --fsdp (the checkpoints are the same whole files)."""

import json
import pydoc_data.topics
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mhe_edge.training.workflow import train

SHAPE = ["--layers", "1", "--d-model", "32", "--heads", "4", "--no-bias", "--max-seq-len", "32"]
# no biases: a K bias gets no true gradient (softmax drops it), and AdamW turns its rounding noise into
# steps of size lr, so it would differ between any two summation orders


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _close(a, b, atol=1e-4, name="model.safetensors"):
    first, second = load_file(str(a / name)), load_file(str(b / name))
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=atol, rtol=0, msg=key)


def _same_checkpoints(a, b):
    """The newest checkpoints of runs `a` and `b` hold the same weights, moments (by name: a parameter
    that never stepped has none in either) and optimizer groups."""
    first, second = (
        p / "checkpoints" / (p / "checkpoints/latest").read_text().strip() for p in (a, b)
    )
    _close(first, second)
    _close(first, second, name="optimizer.safetensors")
    groups = [json.loads((p / "state.json").read_text())["param_groups"] for p in (first, second)]
    assert groups[0] == groups[1]


def _torchrun(*args):
    done = subprocess.run(
        [*TORCHRUN, "-m", "mhe_edge", "train", *map(str, args), "--json"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1  # rank 0 alone reports
    return json.loads(lines[0])


def test_two_processes_ddp_and_fsdp_equal_one_at_twice_the_batch_and_resume_in_one(tmp_path):
    topics = pydoc_data.topics.topics
    text = tmp_path / "notes.txt"
    text.write_text("".join(topics[k] for k in sorted(topics))[:20_000])
    common = [text, "--tokenizer", "bytes", "--attention", "mhe-add", "--seq-len", "16", *SHAPE]
    report = _torchrun(*common, "-o", tmp_path / "two", "--batch", "4", "--steps", "6")
    assert report["tokens_trained"] == 6 * 8 * 16
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

    # sharded (FSDP2 over gloo): the same steps, and the same whole checkpoint files DDP writes
    report = _torchrun(
        *common, "-o", tmp_path / "sharded", "--batch", "4", "--steps", "6", "--fsdp"
    )
    assert report["tokens_trained"] == 6 * 8 * 16
    record = json.loads((tmp_path / "sharded" / "training.json").read_text())
    assert record["processes"] == 2 and record["options"]["fsdp"] is True
    _close(tmp_path / "one", tmp_path / "sharded")
    _close(tmp_path / "two", tmp_path / "sharded")
    _same_checkpoints(tmp_path / "two", tmp_path / "sharded")

    # the 2-process run continues in one process: the same 8 rows per step, as batch 4 x grad-accum 2
    resumed = train(tmp_path / "two", [text], resume=True, options={"steps": 8})
    assert resumed.steps == 8
    assert (
        json.loads((tmp_path / "two" / "training.json").read_text())["options"]["grad_accum"] == 2
    )
    train(tmp_path / "one", [text], resume=True, options={"steps": 8})
    _close(tmp_path / "one", tmp_path / "two")
    # and so does the sharded run (in one process it trains whole, as recorded then)
    train(tmp_path / "sharded", [text], resume=True, options={"steps": 8})
    record = json.loads((tmp_path / "sharded" / "training.json").read_text())
    assert record["options"]["fsdp"] is False and record["processes"] == 1
    _close(tmp_path / "one", tmp_path / "sharded")


def test_uptraining_in_two_processes_equals_one_at_twice_the_batch(tmp_path):
    """A teacher's KL and a freeze under DDP: 2 processes x batch 4 end where one process at batch 8 ends
    (the KL averaged across processes as the loss is; the frozen gradients dropped after the all-reduce).
    A one-process run resumed at the end of its freeze under --fsdp (batch 2 x grad-accum 2 per process)
    ends where it ends resumed in one process: its tied embeddings stay one tensor, and the weights that
    had not stepped yet start their moments afresh, as AdamW's own."""
    topics = pydoc_data.topics.topics
    text = tmp_path / "notes.txt"
    text.write_text("".join(topics[k] for k in sorted(topics))[:20_000])
    shape = dict(n_layers=1, d_model=32, n_heads=4, qkv_bias=False, out_bias=False, mlp_bias=False)
    for name, attention, seed, tied in (
        ("start", "mhe-add", 1, True),
        ("teacher", "mha", 2, False),
    ):
        options = dict(steps=1, batch=2, seq_len=16, seed=seed)
        train(tmp_path / name, [text], attention=attention, tokenizer="bytes", options=options,
              max_seq_len=32, tie_embeddings=tied, **shape)  # fmt: skip
    uptraining = ["--init-from", tmp_path / "start", "--teacher", tmp_path / "teacher"]
    common = [text, *uptraining, "--freeze-steps", "2", "--seq-len", "16", "--steps", "4"]
    two = _torchrun(*common, "-o", tmp_path / "two", "--batch", "4")
    one = train(tmp_path / "one", [text], init_from=tmp_path / "start", teacher=tmp_path / "teacher",
                options=dict(steps=4, batch=8, seq_len=16, freeze_steps=2))  # fmt: skip
    assert abs(one.held_out["cross_entropy"] - two["held_out"]["cross_entropy"]) < 1e-4
    _close(tmp_path / "one", tmp_path / "two")
    start = load_file(str(tmp_path / "start" / "model.safetensors"))
    end = load_file(str(tmp_path / "one" / "model.safetensors"))
    assert any(
        not torch.equal(start[k], end[k]) for k in start if "attn" not in k
    )  # after the freeze

    models = dict(init_from=tmp_path / "start", teacher=tmp_path / "teacher")
    train(
        tmp_path / "base",
        [text],
        **models,
        options=dict(steps=2, batch=8, seq_len=16, freeze_steps=2),
    )
    shutil.copytree(tmp_path / "base", tmp_path / "sharded")
    train(tmp_path / "base", [text], resume=True, options={"steps": 5})
    _torchrun(text, "-o", tmp_path / "sharded", "--resume", "--steps", "5", "--fsdp", "--batch",
              "2", "--grad-accum", "2")  # fmt: skip
    assert "lm_head.weight" not in load_file(str(tmp_path / "sharded" / "model.safetensors"))
    _close(tmp_path / "base", tmp_path / "sharded")
    _same_checkpoints(tmp_path / "base", tmp_path / "sharded")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="sharding over NCCL needs 2 CUDA devices")
def test_fsdp_over_nccl_ends_where_ddp_ends(tmp_path):
    """On 2 GPUs (NCCL, bf16 autocast) a sharded run ends where the DDP run ends. Loosely: CUDA's fused
    attention backward sums in no fixed order, so two runs on CUDA differ by rounding that AdamW turns into
    steps of up to lr, whatever shards them."""
    topics = pydoc_data.topics.topics
    text = tmp_path / "notes.txt"
    text.write_text("".join(topics[k] for k in sorted(topics))[:20_000])
    common = [text, "--tokenizer", "bytes", "--seq-len", "16", "--provider", "cuda", *SHAPE]
    common += ["--tie-embeddings", "--batch", "4", "--steps", "6"]
    ddp = _torchrun(*common, "-o", tmp_path / "ddp")
    sharded = _torchrun(*common, "-o", tmp_path / "sharded", "--fsdp")
    difference = ddp["held_out"]["cross_entropy"] - sharded["held_out"]["cross_entropy"]
    assert abs(difference) < 1e-2
    _close(tmp_path / "ddp", tmp_path / "sharded", atol=6 * 2e-3)  # six steps of at most lr
    _same_checkpoints_named(tmp_path / "ddp", tmp_path / "sharded")
    # and the sharded run continues in one process on the CPU, from its whole checkpoint
    assert (
        train(
            tmp_path / "sharded", [text], resume=True, options={"steps": 7, "provider": "cpu"}
        ).steps
        == 7
    )


def _same_checkpoints_named(a, b):
    """The newest checkpoints of `a` and `b` name the same tensors (weights and moments)."""
    for name in ("model.safetensors", "optimizer.safetensors"):
        first, second = (
            load_file(
                str(p / "checkpoints" / (p / "checkpoints/latest").read_text().strip() / name)
            )
            for p in (a, b)
        )
        assert first.keys() == second.keys()
