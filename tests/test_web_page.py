"""examples/web/: the page loads a transformers.js package, tokenizes, generates and streams in a real
headless Chromium, token-equal to `mhe-edge generate --text`. Skips where Chromium, Node, transformers.js
or playwright-core is absent (`benchmarks/clients.py --install` installs the npm side; Debian's
`chromium` is the browser)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_model

from mhe_edge.exporters import export
from mhe_edge.models.folder import save_folder
from mhe_edge.runtime.text_generation import generate_text
from mhe_edge.text.tokenizer import byte_tokenizer
from mhe_edge.workflows.package import package

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = Path(os.environ.get("MHE_EDGE_CLIENTS_NODE", ROOT / "benchmarks/results/clients/node"))
CHROMIUM = os.environ.get("MHE_EDGE_CHROMIUM", "/usr/bin/chromium")
NEEDED = [NODE_DIR / "node_modules" / p for p in ("@huggingface/transformers", "playwright-core")]


@pytest.mark.skipif(
    shutil.which("node") is None
    or not Path(CHROMIUM).is_file()
    or not all(p.is_dir() for p in NEEDED),
    reason="needs node, Chromium and transformers.js + playwright-core (benchmarks/clients.py --install)",
)
def test_page_generates_in_headless_chromium_as_mhe_edge_does(tmp_path):
    model = tiny_model(attention="mhe-mul", seed=5, d_model=64, vocab_size=300, eos_token_id=0)
    folder = save_folder(model, tmp_path / "model")
    byte_tokenizer().save(folder)
    exported = tmp_path / "model.onnx"
    export(folder, exported)
    package(exported, tmp_path / "js", format="transformers-js", target="ort")
    want = generate_text(exported, "def ", max_new_tokens=12).generations[0]
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples/web/check.py"),
            str(tmp_path / "js"),
            "--node-dir",
            str(NODE_DIR),
            "--text",
            "def ",
            "--new-tokens",
            "12",
            "--chromium",
            CHROMIUM,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    page = json.loads(run.stdout.strip().splitlines()[-1])
    assert "error" not in page, page
    assert page["ids"] == byte_tokenizer().encode("def ")
    assert page["tokens"] == want.tokens  # stopping at EOS, as mhe-edge does, or after 12
    assert page["text"] == byte_tokenizer().decode(want.tokens)
    assert page["streamed"] == page["text"]  # what the page showed as the tokens came
