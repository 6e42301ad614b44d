"""Outputs appear whole or not at all: interrupted runs (Ctrl-C) and full disks leave nothing behind."""

import resource
import signal
import subprocess
import sys
import time

import pytest
from conftest import tiny_model

from mhe_edge import save_checkpoint


def _mhe_edge(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "mhe_edge", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_during_export_leaves_nothing(tmp_path, signal_name):
    """Ctrl-C or SIGTERM while the staged export exists: exit 130, the previous output intact, nothing else
    left. This holds from a background shell too, where SIGINT starts ignored (the CLI re-arms it). SIGHUP
    has SIGTERM's handler (the CLI installs one function for both), so it is not run a third time."""
    # big enough that checking and validating the staged file takes a while
    save_checkpoint(
        tiny_model(
            attention="mhe-mul",
            n_layers=4,
            d_model=256,
            n_heads=8,
            d_ff=1024,
            vocab_size=4000,
            max_seq_len=64,
        ),
        tmp_path / "m.pt",
    )
    (tmp_path / "m.onnx").write_bytes(b"the previous export")
    process = _mhe_edge("export", tmp_path / "m.pt", "--force")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if any(
            p.name.startswith(".m.onnx.") for p in tmp_path.iterdir()
        ):  # the staged output exists now
            process.send_signal(getattr(signal, signal_name))
            break
        time.sleep(0.005)
    else:
        pytest.fail("the export finished or hung before a staged file appeared")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted; nothing was written" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.pt"]
    assert (tmp_path / "m.onnx").read_bytes() == b"the previous export"


def test_the_interrupted_line_survives_a_signal_inside_a_rich_print():
    """A signal that lands inside a rich print (a step's tick line, as the staged file appears) can leave
    the console buffering everything after it; the interrupted line must still reach stderr."""
    code = (
        "from mhe_edge.cli import _exit_interrupted\n"
        "from mhe_edge.cli.output import err\n"
        "err.begin_capture()\n"  # the state such a print leaves: output held in rich's buffer
        "err.print('a tick line that is lost')\n"
        "_exit_interrupted()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "interrupted; nothing was written\n"


def _file_size_limit(limit_bytes):
    def apply():
        signal.signal(
            signal.SIGXFSZ, signal.SIG_IGN
        )  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


@pytest.mark.parametrize("command", ["init-pt", "init-safetensors", "export", "optimize", "to-ort"])
def test_a_full_disk_leaves_nothing(tmp_path, command):
    model = tiny_model(attention="mhe-add")
    save_checkpoint(model, tmp_path / "m.pt")
    if command in ("optimize", "to-ort"):
        from mhe_edge.exporters import export

        export(model, tmp_path / "m.onnx")
    args = {
        "init-pt": ["init", tmp_path / "new.pt"],
        "init-safetensors": ["init", tmp_path / "new.safetensors"],
        "export": ["export", tmp_path / "m.pt", "-o", tmp_path / "new.onnx"],
        "optimize": ["optimize", tmp_path / "m.onnx", "-o", tmp_path / "new.onnx"],
        "to-ort": ["to-ort", tmp_path / "m.onnx", "-o", tmp_path / "new.ort"],
    }[command]
    before = sorted(p.name for p in tmp_path.iterdir())
    process = _mhe_edge(
        *args, preexec_fn=_file_size_limit(100_000)
    )  # the model files are ~0.3-0.9 MB
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 8, stderr
    assert "nothing was written" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_ctrl_c_during_training_saves_a_checkpoint_that_resumes(tmp_path):
    """Training is the one command whose work is worth keeping: Ctrl-C saves a checkpoint first, says how to
    continue, and `--resume` picks it up."""
    run = tmp_path / "run"
    process = _mhe_edge(
        "train",
        "-o",
        run,
        "--preset",
        "tiny",
        "--tokenizer",
        "bytes",
        "--steps",
        "1000000",
        "--batch",
        "2",
        "--seq-len",
        "16",
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        # training started: the staged run's record exists (the run appears only when it ends or stops)
        if list(tmp_path.glob(".run.*.staging/run/training.json")):
            time.sleep(3.0)
            process.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    else:
        pytest.fail("training ended or hung before it started")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "a checkpoint of step" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging left
    step = int((run / "checkpoints" / "latest").read_text().strip().removeprefix("step-"))
    assert step > 0
    resumed = _mhe_edge("train", "-o", run, "--resume", "--steps", str(step + 5), "--json")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    import json

    assert json.loads(stdout)["steps"] == step + 5 and (run / "model.safetensors").is_file()
