"""Token shards: `tokenize` streams text into fixed-size id files that equal the in-memory encoding, in
bounded memory; `train` reads them memory-mapped, never samples the held-out split, and refuses shards
that are damaged, lie, or come from another tokenizer, before anything is created."""

import json
import pydoc_data.topics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mhe_edge.text.corpus import load_corpus, split_held_out
from mhe_edge.text.shards import TokenStream, id_dtype, open_shards
from mhe_edge.text.tokenizer import byte_tokenizer
from mhe_edge.training.loop import TrainOptions, batch_at
from mhe_edge.training.tokenize import tokenize
from mhe_edge.training.workflow import train

SHAPE = dict(n_layers=1, d_model=32, n_heads=4, d_ff=64, max_seq_len=32)
MARK = "\x01\x02\x03"  # control bytes found only in the held-out tail of the second file


def _texts(folder):
    topics = pydoc_data.topics.topics
    text = "".join(topics[k] for k in sorted(topics))[:60_000]
    first, second = folder / "a.txt", folder / "b.txt"
    first.write_text(text[:25_000])
    second.write_text(text[25_000:] + f"\nthe end {MARK} {MARK}\n")
    return [first, second]


@pytest.fixture
def shards(tmp_path):
    files = _texts(tmp_path)
    report = tokenize(files, tmp_path / "shards", tokenizer="bytes", shard_tokens=4096)
    return tmp_path / "shards", files, report


def test_shards_equal_the_in_memory_encoding_and_keep_the_split(shards):
    folder, files, report = shards
    opened = open_shards(folder)
    tokenizer, corpus = byte_tokenizer(), load_corpus(files)
    eos = tokenizer.eos_token_id
    want_train = [i for doc in corpus.documents for i in [*tokenizer.encode(doc), eos]]
    assert opened.train[0 : len(opened.train)].tolist() == want_train
    held = opened.held[0 : len(opened.held)].tolist()
    assert held.count(eos) == 2 and held[-1] == eos
    cuts = np.flatnonzero(np.array(held) == eos)
    held_files = [tokenizer.decode(held[i + 1 : j]) for i, j in zip([-1, *cuts[:-1]], cuts)]
    for path, tail in zip(
        files, held_files
    ):  # each file's tail, cut as the in-memory corpus cuts it
        _, want = split_held_out([path.read_text()])
        assert tail in (want, want.removesuffix("\n"))
    assert held_files[1].endswith(f"the end {MARK} {MARK}\n")
    index = json.loads((folder / "index.json").read_text())
    assert index["dtype"] == "uint16" and report.shards == len(index["shards"]) > 2
    train_shards = [s for s in index["shards"] if s["split"] == "train"]
    assert (
        all(s["tokens"] == 4096 for s in train_shards[:-1]) and train_shards[-1]["tokens"] <= 4096
    )
    assert [d["name"] for d in index["documents"]] == ["a.txt", "b.txt"]  # names, no paths
    assert str(folder.parent) not in (folder / "index.json").read_text()
    assert id_dtype(65_536) == np.dtype("<u2") and id_dtype(65_537) == np.dtype("<u4")


def test_windows_across_shards_and_batches_never_reach_the_held_out_split(shards):
    folder, _, _ = shards
    opened = open_shards(folder)
    whole = opened.train[0 : len(opened.train)]
    for start in (4090, 4096, 8180, len(whole) - 10):  # across and at shard boundaries
        assert opened.train[start : start + 20].tolist() == whole[start : start + 20].tolist()
    mark = set(byte_tokenizer().encode(MARK))
    assert mark <= set(opened.held[0 : len(opened.held)].tolist())  # the mark is held out
    options = TrainOptions(batch=16, seed=3)
    seen = np.concatenate(
        [batch_at(opened.train, step, options, 32).ravel() for step in range(300)]
    )
    assert not mark & set(seen.tolist())
    again = batch_at(opened.train, 7, options, 32)
    assert np.array_equal(again, batch_at(opened.train, 7, options, 32))  # seeded


def test_train_on_shards_is_seeded_and_resumes_with_them(shards, tmp_path):
    folder, _, _ = shards
    options = dict(steps=4, batch=2, seq_len=16, eval_every=1000)
    runs = [train(tmp_path / name, [folder], options=options, **SHAPE) for name in ("r1", "r2")]
    assert runs[0].held_out == runs[1].held_out and runs[0].corpus["kind"] == "shards"
    weights = [(tmp_path / n / "model.safetensors").read_bytes() for n in ("r1", "r2")]
    assert weights[0] == weights[1]
    record = json.loads((tmp_path / "r1" / "training.json").read_text())
    assert str(tmp_path) not in json.dumps(record)  # named by the index's sha256, not a path
    from mhe_edge.errors import RequestError

    with pytest.raises(RequestError, match="give the shards folder"):
        train(tmp_path / "r1", resume=True, options={"steps": 6})
    assert train(tmp_path / "r1", [folder], resume=True, options={"steps": 6}).steps == 6


def test_bad_shards_are_refused_before_training(shards, tmp_path, cli):
    folder, files, _ = shards
    run = tmp_path / "run"
    args = ["train", folder, "-o", run, "--steps", "2", "--batch", "2", "--seq-len", "16"]
    other = tmp_path / "bpe"
    train(other, files, tokenizer="bpe", vocab_size=300, options=dict(steps=1, batch=1, seq_len=8))
    result = cli(*args, "--tokenizer", other / "tokenizer.json")
    assert result.code == 2 and "another tokenizer" in result.stderr
    index_text = (folder / "index.json").read_text()
    shard = folder / "train-00001.bin"
    original = shard.read_bytes()
    damages = {
        "missing": lambda: shard.unlink(),
        "truncated": lambda: shard.write_bytes(original[:-2]),
        "lying index": lambda: (folder / "index.json").write_text(
            index_text.replace('"train_tokens": ', '"train_tokens": 1')
        ),
        "not JSON": lambda: (folder / "index.json").write_text("{"),
        "ids beyond the vocabulary": lambda: shard.write_bytes(b"\xff\xff" * (len(original) // 2)),
        "path as shard name": lambda: (folder / "index.json").write_text(
            index_text.replace('"train-00001.bin"', '"../a.txt"')
        ),
        "another tokenizer file": lambda: (folder / "tokenizer.json").write_text(
            (other / "tokenizer.json").read_text()
        ),
    }
    tokenizer_text = (folder / "tokenizer.json").read_text()
    for name, damage in damages.items():
        damage()
        result = cli(*args)
        assert result.code == 3, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert not run.exists() and not list(tmp_path.glob(".run.*")), name
        shard.write_bytes(original)
        (folder / "index.json").write_text(index_text)
        (folder / "tokenizer.json").write_text(tokenizer_text)
    assert cli(*args).code == 0  # restored: it trains


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_tokenize_streams_a_long_line_in_bounded_memory(tmp_path):
    big = tmp_path / "one-line.txt"
    with open(big, "w") as file:  # 4.8 MB without a newline: pieces must be cut inside the line
        for _ in range(80):
            file.write("word and more words " * 3000)
    # the child reports its own peak (VmHWM: this process image's, unlike ru_maxrss, which counts the
    # forked copy of pytest before exec)
    child = (
        "import sys\nfrom mhe_edge.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
        "    peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "    print(peak.split()[1], file=sys.stderr)"
    )
    args = ["tokenize", big, "-o", tmp_path / "s", "--json"]
    done = subprocess.run(
        [sys.executable, "-c", child, *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    peak_mib = int(done.stderr.split()[-1]) / 1024
    assert peak_mib < 250, peak_mib  # one batch of pieces: ~170 MiB for 24 MB; 450 read whole
    report = json.loads(done.stdout)
    assert report["train_tokens"] + report["held_out_tokens"] == big.stat().st_size + 2
    opened = open_shards(tmp_path / "s")
    assert opened.train[0:20].tolist() == byte_tokenizer().encode("word and more words ")


def test_token_stream_slices_like_an_array():
    parts = [
        np.arange(0, 5, dtype="<u2"),
        np.arange(5, 6, dtype="<u2"),
        np.arange(6, 12, dtype="<u2"),
    ]
    stream, whole = TokenStream(parts), np.arange(12)
    assert len(stream) == 12
    for start, stop in [(0, 12), (3, 7), (5, 6), (4, 11), (11, 12), (7, 7), (-3, 12)]:
        assert stream[start:stop].tolist() == whole[start:stop].tolist()
