"""Commands on text: `train` (a decoder on text files, into a model folder) and `eval` (bits per byte on
held-out text, for a folder and the ONNX files made from it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mhe_edge import options
from mhe_edge.cli import command
from mhe_edge.cli.options import (
    Attention,
    Bias,
    DFf,
    DModel,
    Force,
    HeadDim,
    Heads,
    Json,
    KvHeads,
    Layers,
    MaxSeqLen,
    Mlp,
    Norm,
    Position,
    Preset,
    Provider,
    RopePairTiedEmbeddings,
    RopeTheta,
    Threads,
    TieEmbeddings,
    cli_option,
    shape_overrides,
)
from mhe_edge.cli.output import emit, err, literal, out

# click's ParameterSource names (typer ships its own copy of click, so compare names, not members)
_DEFAULTS = ("DEFAULT", "DEFAULT_MAP")
TextFiles = Annotated[
    list[Path] | None,
    typer.Argument(
        help="UTF-8 text files, or one token shards folder from `mhe-edge tokenize` (default: Python's"
        " documentation text, shipped with every Python).",
        show_default=False,
    ),
]


@command()
def train(
    ctx: typer.Context,
    text: TextFiles = None,
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="The run folder: the model folder, its tokenizer, checkpoints, log and loss curve.",
            show_default=False,
        ),
    ] = ...,  # type: ignore[assignment]  # typer's mark for a required option
    attention: Attention = options.ATTENTION.default,
    preset: Preset = options.PRESET.default,
    layers: Layers = None,
    d_model: DModel = None,
    heads: Heads = None,
    kv_heads: KvHeads = None,
    head_dim: HeadDim = None,
    d_ff: DFf = None,
    max_seq_len: MaxSeqLen = None,
    position: Position = None,
    rope_theta: RopeTheta = None,
    norm: Norm = None,
    mlp: Mlp = None,
    tie_embeddings: TieEmbeddings = None,
    bias: Bias = None,
    rope_pair_tied_embeddings: RopePairTiedEmbeddings = None,
    tokenizer: Annotated[
        str,
        typer.Option(
            help="bpe (byte-level BPE learned from the text), bytes (one token per byte), or a tokenizer.json path."
        ),
    ] = "bpe",
    vocab_size: Annotated[int | None, cli_option(options.BPE_VOCAB)] = None,
    steps: Annotated[int | None, cli_option(options.STEPS)] = None,
    minutes: Annotated[float | None, cli_option(options.MINUTES)] = None,
    seq_len: Annotated[int | None, cli_option(options.TRAIN_SEQ_LEN)] = None,
    batch: Annotated[int, cli_option(options.TRAIN_BATCH)] = options.TRAIN_BATCH.default,
    grad_accum: Annotated[int, cli_option(options.GRAD_ACCUM)] = options.GRAD_ACCUM.default,
    lr: Annotated[float, cli_option(options.LR)] = options.LR.default,
    seed: Annotated[int, cli_option(options.TRAIN_SEED)] = options.TRAIN_SEED.default,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in OUTPUT from its newest checkpoint: --steps may extend it, --minutes,"
            " --provider, --threads and --fsdp may change; any other option must match the recorded run."
            " Give TEXT again (runs record text files by name and sha256, never by path).",
            metavar="",
        ),
    ] = False,
    provider: Provider = options.PROVIDER.default,
    threads: Annotated[int | None, cli_option(options.TORCH_THREADS)] = None,
    fsdp: Annotated[bool, cli_option(options.FSDP)] = options.FSDP.default,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Uptrain: start from this model folder (e.g. from `convert`), its config and tokenizer."
        ),
    ] = None,
    teacher: Annotated[
        Path | None,
        typer.Option(help="Distil from this model (same vocabulary): KL on its logits."),
    ] = None,
    freeze_steps: Annotated[int, cli_option(options.FREEZE_STEPS)] = options.FREEZE_STEPS.default,
    distill_weight: Annotated[
        float, cli_option(options.DISTILL_WEIGHT)
    ] = options.DISTILL_WEIGHT.default,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Train a decoder on text and write a model folder with its tokenizer: everything `export`, `eval`,
    `generate --text` and `package` need. Ctrl-C saves a checkpoint; `--resume` continues it.

    Example: `mhe-edge train -o my-model --attention mhe-mul --preset tiny` (Python's own docs; about half a
    minute on 2 cores), then `mhe-edge eval my-model`. Uptrain a converted model:
    `mhe-edge train -o up --init-from my-model-mhe --teacher my-model --freeze-steps 50 --steps 300`.
    """
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from mhe_edge.training.workflow import train as train_model

    # Only what was asked for: a resumed run checks each of these against its record (defaults are not
    # requests), and a new run fills the rest with the same defaults.
    given = {
        name
        for name in ctx.params
        if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in _DEFAULTS
    }
    values = dict(
        steps=steps,
        minutes=minutes,
        seq_len=seq_len,
        batch=batch,
        grad_accum=grad_accum,
        lr=lr,
        seed=seed,
        provider=provider,
        threads=threads,
        fsdp=fsdp,
        freeze_steps=freeze_steps,
        distill_weight=distill_weight,
    )
    options = {name: value for name, value in values.items() if name in given}

    def asked(name: str, value):
        return value if name in given else None

    quiet = os.environ.get("RANK", "0") != "0"  # under torchrun, rank 0 alone reports
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    with Progress(
        *columns, console=err, transient=True, disable=as_json or quiet or not err.is_terminal
    ) as bar:
        task = bar.add_task("train", total=1.0, status="")

        def on_stage(name: str) -> None:
            bar.update(task, description=name)

        def on_step(info) -> None:
            validated = f", held-out {info.val_loss:.3f}" if info.val_loss is not None else ""
            bar.update(
                task,
                completed=info.fraction,
                status=f"step {info.step}: loss {info.loss:.3f}{validated},"
                f" {info.tokens_per_second:,.0f} tok/s",
            )

        report = train_model(
            output,
            text,
            attention=asked("attention", attention),
            preset=asked("preset", preset),
            tokenizer=asked("tokenizer", tokenizer),
            vocab_size=vocab_size,
            options=options,
            resume=resume,
            force=force,
            on_step=on_step,
            on_stage=on_stage,
            init_from=init_from,
            teacher=teacher,
            **shape_overrides(
                layers,
                d_model,
                heads,
                kv_heads,
                head_dim,
                d_ff,
                max_seq_len,
                position,
                rope_theta,
                norm,
                mlp,
                tie_embeddings,
                bias,
                rope_pair_tied_embeddings,
            ),
        )

    def render(report) -> None:
        held = report.held_out
        out.print(
            f"wrote {literal(report.path)}: {report.config['attention']}, {report.steps} steps, "
            f"{report.tokens_trained:,} tokens in {report.seconds:.0f} s",
            highlight=False,
        )
        out.print(
            f"held-out: {held['bits_per_byte']:.3f} bits per byte (perplexity {held['perplexity']:.1f}); "
            f"unigram {held['unigram_bits_per_byte']:.3f}, bigram {held['bigram_bits_per_byte']:.3f}",
            highlight=False,
        )
        out.print(f"sample: {literal(report.sample)}", highlight=False)

    if not quiet:
        emit(report, as_json, render)


@command()
def tokenize(
    text: Annotated[
        list[Path], typer.Argument(help="UTF-8 text files, of any size.", show_default=False)
    ],
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="The shards folder (index.json, tokenizer.json, *.bin).",
            show_default=False,
        ),
    ] = ...,  # type: ignore[assignment]  # typer's mark for a required option
    tokenizer: Annotated[
        str,
        typer.Option(
            help="bytes, bpe (learned from the files, streamed), a tokenizer.json or a folder with one."
        ),
    ] = "bytes",
    vocab_size: Annotated[int | None, cli_option(options.BPE_VOCAB)] = None,
    shard_tokens: Annotated[int, cli_option(options.SHARD_TOKENS)] = options.SHARD_TOKENS.default,
    force: Force = False,
    as_json: Json = False,
) -> None:
    """Tokenize text of any size into fixed-size token shards (uint16 ids where the vocabulary fits, else
    uint32) with an index and a held-out split, in bounded memory; `train SHARDS -o RUN` trains on them
    memory-mapped.

    Example: `mhe-edge tokenize big.txt -o big-shards --tokenizer my-run`, then
    `mhe-edge train big-shards -o big-run`
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from mhe_edge.training.tokenize import tokenize as tokenize_text

    columns = [BarColumn(), DownloadColumn(), TimeRemainingColumn()]
    with Progress(
        *columns, console=err, transient=True, disable=as_json or not err.is_terminal
    ) as bar:
        task = bar.add_task("tokenize", total=None)
        report = tokenize_text(
            text,
            output,
            tokenizer=tokenizer,
            vocab_size=vocab_size,
            shard_tokens=shard_tokens,
            force=force,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )

    def render(report) -> None:
        out.print(
            f"wrote {literal(report.path)}: {report.documents} document(s), {report.bytes:,} bytes ->"
            f" {report.train_tokens:,} training and {report.held_out_tokens:,} held-out ids"
            f" ({report.dtype}, {report.shards} shard(s))",
            highlight=False,
        )

    emit(report, as_json, render)


@command(name="eval")
def evaluate(
    models: Annotated[
        list[Path],
        typer.Argument(
            help="Model folders (from `train`) and ONNX files made from them.", show_default=False
        ),
    ],
    text: Annotated[
        list[Path] | None,
        typer.Option(
            help="Score these UTF-8 files (default: the first model's held-out training text)."
        ),
    ] = None,
    window: Annotated[int | None, cli_option(options.SCORE_WINDOW)] = None,
    batch: Annotated[int, cli_option(options.SCORE_BATCH)] = options.SCORE_BATCH.default,
    provider: Provider = options.PROVIDER.default,
    threads: Threads = None,
    as_json: Json = False,
) -> None:
    """Cross-entropy, perplexity and bits per byte on held-out text, one row per model, on identical
    windows: a folder in PyTorch beside its fp32, fp16 and int8 ONNX files shows what each step costs.

    Example: `mhe-edge eval my-model my-model.onnx my-model.int8.onnx`
    """
    from mhe_edge.workflows.evaluate import evaluate as evaluate_models

    report = evaluate_models(
        models, text, window=window, batch=batch, provider=provider, threads=threads
    )

    def render(report) -> None:
        table = Table(
            title=f"{literal(report.text)}: {report.bytes:,} bytes, windows of {report.window} tokens"
        )
        for column in ("model", "runs as", "tokens", "nats/tok", "ppl", "bits/byte", "change"):
            table.add_column(column, justify="right")
        for row in report.rows:
            runs_as = (
                "PyTorch"
                if row.runtime == "pytorch"
                else f"ORT {row.target or 'export'} {row.precision}"
            )
            table.add_row(
                literal(Path(row.model).name),
                runs_as,
                f"{row.tokens:,}",
                f"{row.cross_entropy:.4f}",
                f"{row.perplexity:.2f}",
                f"{row.bits_per_byte:.4f}",
                f"{row.bits_per_byte_change:+.4f}",
            )
        out.print(table)
        out.print(
            f"unigram (the text's own byte entropy): {report.unigram_bits_per_byte:.3f} bits per byte",
            highlight=False,
        )

    emit(report, as_json, render)
