"""Every option with a bound or a fixed set of values, declared once: default, type, bounds, help.

The Python API checks its arguments with `Option.check`; the CLI builds its typer options from the same
declarations (`mhe_edge.cli.options.cli_option`) and checks each value with the same `check` while it
parses. So `optimize(int4_block_size=0)` and `mhe-edge optimize --int4 --int4-block-size 0` are refused
by the same `RequestError` (exit 2) with the same one-line message, before any work starts.

Adding an option: declare it here, call `NAME.check(value)` where the API takes it, and use
`cli_option(NAME)` in the command. Its bounds and default are then written nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from mhe_edge.config import ARCHS, ATTENTION_KINDS, LIMITS, MLPS, NORMS, POSITIONS, PRESETS
from mhe_edge.contract import MAX_EXPORT_OPSET, MIN_EXPORT_OPSET, OLDEST_OPSET
from mhe_edge.errors import RequestError

MAX_SEQ_LEN = LIMITS[
    "max_seq_len"
]  # the longest sequence any command accepts (the config's own bound)
MAX_BATCH = 4096  # sequences per call
MAX_NEW_TOKENS = 1_000_000  # decode steps per call


@dataclass(frozen=True)
class Option:
    name: str  # the API's keyword; the CLI's flag is `--name` with dashes
    help: str  # one sentence for `--help` (the bounds are appended)
    default: Any = None  # None: unset, the command derives a value (or the option is off)
    type: type = int  # int, float, str or bool (a flag: --name/--no-name)
    low: float | None = None  # smallest allowed value (numbers)
    high: float | None = None  # largest allowed value (numbers)
    choices: tuple[Any, ...] = ()  # the allowed values, when they are a fixed set

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def described(self, help: str) -> Option:
        """The same option with the help a particular command gives it (bounds and default unchanged)."""
        return dataclasses.replace(self, help=help)

    def unset(self, help: str) -> Option:
        """The same bounds with no default (None: the command picks the value, e.g. from a preset)."""
        return dataclasses.replace(self, help=help, default=None)

    def bounds_text(self) -> str:
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.low is not None and self.high is not None:
            if self.type is int:
                return f"{int(self.low):,} to {int(self.high):,}"
            return f"{self.low:g} to {self.high:g}"
        return ""

    def check(self, value: Any) -> Any:
        """`value` if it is allowed, else RequestError naming the flag and the bounds; None is allowed
        when the option has no default (it means "unset")."""
        if value is None and self.default is None:
            return None
        if not _is_type(value, self.type):
            raise RequestError(f"{self.flag} must be {_TYPE_NAMES[self.type]}, not {value!r}")
        if self.choices and value not in self.choices:
            raise RequestError(f"{self.flag} must be {self.bounds_text()}, not {value!r}")
        if self.type in (int, float):
            if (self.low is not None and value < self.low) or (
                self.high is not None and value > self.high
            ):
                raise RequestError(f"{self.flag} must be {self.bounds_text()}, not {value!r}")
        return value


_TYPE_NAMES = {int: "an integer", float: "a finite number", str: "text", bool: "true or false"}


def _is_type(value: Any, kind: type) -> bool:
    if kind is bool or isinstance(value, bool):  # True is an int to Python, never to a command
        return isinstance(value, bool) and kind is bool
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def check_all(*pairs: tuple[Option, Any]) -> None:
    """Check several options at once, where the API takes them: `check_all((BATCH, batch), ...)`."""
    for option, value in pairs:
        option.check(value)


# -- running a model ------------------------------------------------------------------------------------
BATCH = Option("batch", "Sequences per call.", 1, int, 1, MAX_BATCH)
SEQ_LEN = Option(
    "seq_len",
    "Prompt length (decoders) or sequence length (encoders); default 128, or what fits the model.",
    None,
    int,
    1,
    MAX_SEQ_LEN,
)
PAST_LEN = Option(
    "past_len",
    "Decoders: time decode steps after a cache of this many positions (seeded values, no prefill run or"
    " timed) instead of a --seq-len prompt; with --new-tokens it must fit the model's max positions.",
    None,
    int,
    1,
    MAX_SEQ_LEN,
)
PREFILL_CHUNK = Option(
    "prefill_chunk", "Feed the prompt in chunks of this many tokens.", None, int, 1, MAX_SEQ_LEN
)
NEW_TOKENS = Option(
    "new_tokens", "Decode steps after the prefill (decoders).", 32, int, 0, MAX_NEW_TOKENS
)
MAX_NEW = Option(
    "max_new_tokens", "At most this many new tokens per prompt.", 64, int, 0, MAX_NEW_TOKENS
)
RUNS = Option("runs", "Measured runs per point.", 5, int, 1, 10_000)
WARMUP = Option("warmup", "Unmeasured runs first.", 1, int, 0, 1000)
THREADS = Option(
    "threads", "ONNX Runtime intra-op threads (default: all cores).", None, int, 1, 1024
)
PROVIDER = Option(
    "provider",
    "Where to run; refused (exit 7), never silently replaced, when unavailable.",
    "cpu",
    str,
    choices=("cpu", "cuda"),
)

# -- sampling -------------------------------------------------------------------------------------------
TEMPERATURE = Option(
    "temperature", "0: greedy; otherwise sample from softmax(logits / temperature).", 0.0, float,
    0.0, 100.0,
)  # fmt: skip
TOP_K = Option(
    "top_k", "Sample among the k likeliest tokens (0: all).", 0, int, 0, LIMITS["vocab_size"]
)
TOP_P = Option(
    "top_p",
    "Sample among the likeliest tokens whose probabilities sum to p.",
    1.0,
    float,
    1e-4,
    1.0,
)
REPETITION_PENALTY = Option(
    "repetition_penalty", "Above 1 discourages tokens already seen.", 1.0, float, 0.01, 100.0
)
SEED = Option(
    "seed", "Seed the sampler: the same seed gives the same text.", None, int, 0, 2**63 - 1
)

# -- making files ---------------------------------------------------------------------------------------
OPSET = Option(
    "opset", "ONNX opset; 23 is the first with the standard Attention op.", 23, int, MIN_EXPORT_OPSET,
    MAX_EXPORT_OPSET,
)  # fmt: skip
TARGET_OPSET = Option(
    "opset", "Target opset: ort 17-21 (default 21), portable 17-22 (default 17).", None, int,
    OLDEST_OPSET, MIN_EXPORT_OPSET,
)  # fmt: skip
# fp32 parity, `export` (against PyTorch) and `optimize` (against its input): each output within
# atol + rtol x its largest magnitude (verification.py says why the scale matters)
ATOL = Option(
    "atol", "Allowed |difference| on any output, plus rtol's share.", 1e-4, float, 1e-12, 1.0
)
RTOL = Option(
    "rtol",
    "Allowed |difference| per unit of the output's largest magnitude (fp32 rounding grows with it).",
    1e-5,
    float,
    0.0,
    1.0,
)
TARGET = Option(
    "target",
    "std: one standard Attention per layer; ort: com.microsoft.GroupQueryAttention; portable: basic ops.",
    "std",
    str,
    choices=("std", "ort", "portable"),
)
ORT_OPTIMIZATION_LEVEL = Option(
    "optimization_level",
    "basic keeps standard ONNX ops; extended/all add ONNX Runtime's CPU fusions (com.microsoft ops).",
    "basic",
    str,
    choices=("basic", "extended", "all"),
)
INT4_BLOCK_SIZE = Option(
    "int4_block_size", "With --int4: weights per scale.", 32, int, choices=(16, 32, 64, 128, 256)
)
INT4_ACCURACY_LEVEL = Option(
    "int4_accuracy_level",
    "With --int4: MatMulNBits compute (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8).",
    4,
    int,
    0,
    4,
)
INT4_ALGORITHM = Option(
    "int4_algorithm",
    "With --int4: rtn (round to nearest), hqq (half-quadratic, zero points), k-quant, or gptq"
    " (with --int4-calibration-text).",
    "rtn",
    str,
    choices=("rtn", "hqq", "k-quant", "gptq"),
)
INT4_SHARE_TIED_TABLE = Option(
    "int4_share_tied_table",
    "With --int4 on a model whose head is its embedding table: the table reads the head's 4-bit"
    " bytes, so the file holds one copy (85 MB less at Qwen2-0.5B's shape). ONNX Runtime then keeps"
    " those bytes beside the head's prepacked ones, so a session holds about as much more: smaller"
    " to ship, larger to run.",
    False,
    bool,
)
MAX_QUALITY_LOSS = Option(
    "max_quality_loss",
    "Refuse --fp16/--int8/--int4 beyond this many bits per byte lost (defaults: fp16 0.005, int8 0.02,"
    " int4 0.1).",
    None,
    float,
    0.0,
    100.0,
)

# -- building and comparing models ----------------------------------------------------------------------
ARCH = Option("arch", "Encoder or decoder.", "decoder", str, choices=ARCHS)
PRESET = Option("preset", "Starting sizes.", "tiny", str, choices=tuple(PRESETS))
ATTENTION = Option(
    "attention", "The attention kind.", "mhe-mul", str, choices=tuple(ATTENTION_KINDS)
)


@dataclass(frozen=True)
class ComparePreset:
    """What `compare` measures unless told otherwise (each value is checked by its option)."""

    seq_lens: tuple[int, ...]  # those that fit the models' context (built models: made to fit)
    batch: int
    new_tokens: int
    runs: int
    synthetic_past: bool  # decode timed from a cache already holding seq_len positions (no prefill)


# Batch 4 at 512 and 1024 tokens: long enough that MHA's cache is a third to a half of a step's bytes on
# the small preset (MHE's a sixteenth to an eighth), short enough that the default run stays near 1.5
# minutes on 2 idle cores.
COMPARE_DEFAULT = ComparePreset((512, 1024), 4, 32, 3, False)
# Contexts where the cache is most of what a decode step reads; a 16k-token prefill per model would take
# minutes on a laptop's CPU, so each step is timed from a synthetic past of that length instead.
COMPARE_LONG_CONTEXT = ComparePreset((4096, 16384), 4, 8, 3, True)
_DEFAULT, _LONG = COMPARE_DEFAULT, COMPARE_LONG_CONTEXT
COMPARE_BATCH = BATCH.unset(
    f"Sequences per call (default: {_DEFAULT.batch}; {_LONG.batch} with --long-context)."
)
COMPARE_NEW_TOKENS = NEW_TOKENS.unset(
    f"Decode steps per run (default: {_DEFAULT.new_tokens}; {_LONG.new_tokens} with --long-context)."
)
COMPARE_RUNS = RUNS.unset(
    f"Interleaved rounds: every model is profiled once per round (default: {_DEFAULT.runs};"
    f" {_LONG.runs} with --long-context)."
)

# -- a model's shape (`init`, `train`): unset ones keep the preset's; the bounds are the config's own ------
LAYERS = Option("layers", "Override the number of blocks.", None, int, 1, LIMITS["n_layers"])
D_MODEL = Option("d_model", "Override the model width.", None, int, 1, LIMITS["d_model"])
HEADS = Option("heads", "Override the number of (query) heads.", None, int, 1, LIMITS["n_heads"])
KV_HEADS = Option("kv_heads", "KV heads, for gqa.", None, int, 1, LIMITS["n_kv_heads"])
HEAD_DIM = Option(
    "head_dim", "Head size (default d_model / heads).", None, int, 1, LIMITS["head_dim"]
)
D_FF = Option("d_ff", "MLP width (default 4 * d_model).", None, int, 1, LIMITS["d_ff"])
MAX_SEQ_LEN_OPTION = Option(
    "max_seq_len", "Longest sequence (positions).", None, int, 1, MAX_SEQ_LEN
)
POSITION = Option(
    "position", "learned (a table of positions) or rope (rotary).", None, str, choices=POSITIONS
)
ROPE_THETA = Option("rope_theta", "RoPE's base, with --position rope.", None, float, 1.0, 1e12)
NORM = Option("norm", "The norm.", None, str, choices=NORMS)
MLP = Option("mlp", "The MLP.", None, str, choices=MLPS)
VOCAB_SIZE = Option("vocab_size", "Vocabulary size.", None, int, 1, LIMITS["vocab_size"])
ROPE_PAIR_TIED_EMBEDDINGS = Option(
    "rope_pair_tied_embeddings",
    "MHE-MUL with --position rope: one query and one key head-embedding value per rotation pair, so"
    " `mhe-edge fold` writes it exactly as a Llama checkpoint with one KV head, which tools that read"
    " Llama (transformers, llama.cpp, vLLM) run. Costs held-out quality: +0.026 bits per byte on"
    " average (tiny-llama, 300 steps, 3 seeds: +0.005 to +0.054; benchmarks/rope_foldable.py).",
    None,
    bool,
)
WEIGHT_SEED = Option("seed", "Seed for the random weights.", 0, int, 0, 2**32 - 1)

# -- converting a pretrained model (`convert`) ----------------------------------------------------------
CONVERT_ATTENTION = Option(
    "attention",
    "mhe-mul, mhe-add, or mqa (the GQA paper's mean-pooled baseline: queries kept, one KV head).",
    "mhe-mul",
    str,
    choices=("mhe-mul", "mhe-add", "mqa"),
)
CONVERT_INIT = Option(
    "init",
    "svd: the best least-squares fit MHE can express; mean: mean pooling, neutral embeddings.",
    "svd",
    str,
    choices=("svd", "mean"),
)

# -- training and scoring text --------------------------------------------------------------------------
BPE_VOCAB = Option(
    "vocab_size", "BPE vocabulary (default: the preset's).", None, int, 257, 1_000_000
)  # the 256 bytes and <|endoftext|> come first
STEPS = Option(
    "steps", "Optimizer steps (default 1000 unless --minutes).", None, int, 1, 10_000_000
)
MINUTES = Option(
    "minutes", "Train for this long instead (the learning rate decays over the time).", None,
    float, 0.01, 100_000,
)  # fmt: skip
TRAIN_SEQ_LEN = Option(
    "seq_len", "Tokens per row (default: min(max_seq_len, 256)).", None, int, 2, MAX_SEQ_LEN
)
TRAIN_BATCH = Option("batch", "Rows per micro-batch, per process.", 16, int, 1, MAX_BATCH)
GRAD_ACCUM = Option(
    "grad_accum",
    "Micro-batches per optimizer step: a step trains on batch x grad-accum x processes rows.",
    1,
    int,
    1,
    1024,
)
FSDP = Option(
    "fsdp",
    "Under torchrun: shard weights, gradients and AdamW's moments across the processes (FSDP2) instead"
    " of a whole copy in each (DDP); the same results, checkpoints written whole. --resume keeps the"
    " recorded choice unless told.",
    False,
    bool,
)
LR = Option("lr", "Peak learning rate (warmup, then cosine to a tenth).", 2e-3, float, 1e-7, 0.5)
# the rest of TrainOptions (the API's; the CLI keeps their defaults)
MIN_LR_RATIO = Option("min_lr_ratio", "The cosine decays to lr x this.", 0.1, float, 0.0, 1.0)
WARMUP_STEPS = Option(
    "warmup", "Linear warmup steps (default 5% of the steps, at most 200).", None, int, 0,
    10_000_000,
)  # fmt: skip
WEIGHT_DECAY = Option("weight_decay", "AdamW's decay of matrices.", 0.1, float, 0.0, 10.0)
GRAD_CLIP = Option("grad_clip", "Clip the gradient norm to this.", 1.0, float, 1e-6, 1e6)
EVAL_EVERY = Option("eval_every", "Validate every this many steps.", 100, int, 1, 10_000_000)
EVAL_WINDOWS = Option("eval_windows", "Held-out windows per validation.", 32, int, 1, 1_000_000)
SHARD_TOKENS = Option(
    "shard_tokens", "Token ids per shard file (memory holds one shard while tokenizing).", 1 << 23,
    int, 1024, 1 << 30,
)  # fmt: skip
CHECKPOINT_EVERY = Option(
    "checkpoint_every", "Save a checkpoint every this many steps.", 200, int, 1, 10_000_000
)
TRAIN_SEED = Option(
    "seed",
    "Seeds weights and batches: the same seed, text and options give the same model on the CPU.",
    0,
    int,
    0,
    2**32 - 1,
)
TORCH_THREADS = Option(
    "threads", "PyTorch threads (default: PyTorch's choice).", None, int, 1, 1024
)
FREEZE_STEPS = Option(
    "freeze_steps",
    "Uptraining: train only the converted attention (Q/K/V, head embeddings) for the first steps.",
    0,
    int,
    0,
    10_000_000,
)
DISTILL_WEIGHT = Option(
    "distill_weight", "With --teacher: the KL's share of the loss.", 0.5, float, 0.0, 1.0
)
SCORE_WINDOW = Option(
    "window", "Tokens of context per scoring window (default: min(max_seq_len, 256)).", None, int,
    1, MAX_SEQ_LEN,
)  # fmt: skip
SCORE_BATCH = Option("batch", "Windows per call.", 8, int, 1, MAX_BATCH)

# -- packaging ------------------------------------------------------------------------------------------
PACKAGE_FORMAT = Option(
    "format",
    "genai (onnxruntime-genai), transformers-js or optimum: a folder that client loads as it is.",
    "genai",
    str,
    choices=("genai", "transformers-js", "optimum"),
)
PRECISIONS = Option(
    "precisions",
    "transformers-js, optimum: the files to write, a comma-separated list of fp32, fp16, int8, int4"
    " (model.onnx, model_fp16.onnx, model_quantized.onnx, model_q4.onnx).",
    "fp32",
    str,
)
EOS_TOKEN_ID = Option(
    "eos_token_id",
    "End-of-sequence id for the generator (default: the model's own, else vocab_size - 1).",
    None,
    int,
    0,
    LIMITS["vocab_size"] - 1,
)
