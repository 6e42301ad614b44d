"""The run record (training.json) from training's side: the options it holds, and what `--resume` may change.

A resumed run must continue the run that was recorded, or its result is neither run. So every option that
changes the result (the learning rate and its schedule, batch, accumulation, sequence length, seed, the
model's shape and attention, the tokenizer, the text, the starting model of `--init-from`, the teacher and
the uptraining schedule) must match the record; a request that differs is
refused with one line naming the flags. Only the budget (`steps`, `minutes`) and where the run happens
(`provider`, `threads`, the number of processes, and `fsdp`) may change.

`fsdp` (sharding across the processes, or a whole copy in each) changes how a step is computed, not what:
checkpoints are the same whole files either way, so any run resumes with or without it. Unless asked
(`--fsdp`, `--no-fsdp`), a resumed run keeps the recorded choice when it has processes to shard over, and
trains whole in one process.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from mhe_edge.config import ModelConfig
from mhe_edge.errors import CheckpointError, MheEdgeError, RequestError, first_line
from mhe_edge.training.loop import TrainOptions

BUDGET = ("steps", "minutes")  # more (or less) of the same run
PLACEMENT = ("provider", "threads")  # where it runs, not what it computes
SHARING = (
    "fsdp"  # how the processes share the model: as asked, else as recorded while there are several
)
# how a step's rows are split: only batch * grad_accum * processes (the rows per step) is the run's
SPLIT = ("batch", "grad_accum")
# compared by fingerprint (sha256), shown by flag alone: the text files, the starting model, the teacher
FINGERPRINTED = ("text", "init_from", "teacher")
# config fields whose CLI flag is not `--` + the field's name with dashes
CONFIG_FLAGS = {
    "n_layers": "--layers",
    "n_heads": "--heads",
    "n_kv_heads": "--kv-heads",
    "qkv_bias": "--bias",
    "out_bias": "--bias",
    "mlp_bias": "--bias",
}

# a config field a record made before the field existed lacks holds its default
CONFIG_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}


def flag_of(name: str) -> str:
    if name == "text":
        return "TEXT"
    return CONFIG_FLAGS.get(name, "--" + name.replace("_", "-"))


def options_from_record(options: Any, where: str) -> TrainOptions:
    """The recorded TrainOptions, checked as a request would be (a damaged record is a CheckpointError)."""
    if not isinstance(options, dict):
        raise CheckpointError(f"{where}: options must be a mapping, not {type(options).__name__}")
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    unknown = sorted(map(str, set(options) - known))
    if unknown:
        raise CheckpointError(f"{where}: unknown option(s) {', '.join(unknown)}")
    try:
        recorded = TrainOptions(**options)
        recorded.check()
    except (MheEdgeError, TypeError) as exc:
        raise CheckpointError(f"{where}: {first_line(exc)}") from exc
    return recorded


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's JSON: two tokenizers with the same fingerprint encode identically."""
    return hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest()


def resumed_options(
    record: dict[str, Any],
    where: str,
    requested: dict[str, Any],
    run_tokenizer,
    processes: int = 1,
) -> TrainOptions:
    """The options of the resumed run: the recorded ones with the budget and placement of `requested`.

    `requested` holds only what the caller asked for explicitly: TrainOptions fields, config fields,
    `attention`, `preset`, `tokenizer`, `vocab_size`, `text` (the text files' sha256 digests, in order),
    `init_from` and `teacher` (the given models' fingerprints)."""
    recorded = options_from_record(record["options"], where)
    config, model, tokenizer_record = (
        record["config"],
        record.get("model", {}),
        record.get("tokenizer", {}),
    )
    differing: list[str] = []
    seen: set[str] = set()

    def differs(name: str, want: Any, have: Any) -> None:
        if want == have or flag_of(name) in seen:
            return
        seen.add(flag_of(name))
        simple = isinstance(have, (int, float, str)) and name not in FINGERPRINTED
        differing.append(f"{flag_of(name)} (recorded: {have})" if simple else flag_of(name))

    option_names = {f.name for f in dataclasses.fields(TrainOptions)}
    for name, value in requested.items():
        if name in BUDGET or name in PLACEMENT or name in SPLIT or name == SHARING:
            continue
        if name in option_names:
            differs(name, value, getattr(recorded, name))
        elif name == "preset":
            differs(name, value, model.get("preset") if isinstance(model, dict) else None)
        elif name == "tokenizer":
            if value in ("bpe", "bytes"):
                differs(name, value, tokenizer_record.get("kind"))
            else:  # a file: it must hold the run's own tokenizer
                differs(name, _fingerprint_of_file(value), tokenizer_fingerprint(run_tokenizer))
        elif name == "vocab_size":
            have = tokenizer_record.get("requested_vocab_size", tokenizer_record.get("vocab_size"))
            differs(name, value, have)
        elif name == "text":
            sources = record["corpus"].get("sources") or []
            differs(name, list(value), [s.get("sha256") for s in sources if isinstance(s, dict)])
        elif name in FINGERPRINTED:  # the given model's fingerprint against the recorded one
            differs(name, value, record.get(f"{name}_sha256"))
        elif name in config or name in CONFIG_DEFAULTS:
            differs(name, value, config.get(name, CONFIG_DEFAULTS.get(name)))
        else:
            raise RequestError(f"train --resume does not know the option {name!r}")
    if differing:
        raise RequestError(
            f"{', '.join(differing)}: not as the recorded run; a resumed run keeps its options (only"
            " --steps, --minutes, --provider, --threads and --fsdp may change): drop them, or start a new run"
            " with --force"
        )
    changes = {k: v for k, v in requested.items() if k in BUDGET + PLACEMENT and v is not None}
    changes.update(_split(recorded, record.get("processes", 1), requested, processes))
    changes[SHARING] = requested.get(SHARING, recorded.fsdp and processes > 1)
    resumed = dataclasses.replace(recorded, **changes)
    resumed.check()
    return resumed


def _split(
    recorded: TrainOptions, recorded_processes: Any, requested: dict[str, Any], processes: int
):
    """batch and grad_accum for `processes` that keep the recorded rows per step; by default the recorded
    batch, with the accumulation that makes up for a different number of processes."""
    if isinstance(recorded_processes, bool) or not isinstance(recorded_processes, int):
        recorded_processes = 1
    rows = recorded.batch * recorded.grad_accum * max(1, recorded_processes)
    batch = requested.get("batch", recorded.batch)
    if "grad_accum" in requested:
        accum = requested["grad_accum"]
    else:
        accum = max(1, rows // (batch * processes))
    if batch * accum * processes != rows:
        raise RequestError(
            f"the recorded run trains on {rows} rows per step; --batch {batch} x --grad-accum {accum} x"
            f" {processes} process(es) = {batch * accum * processes}: choose --batch and --grad-accum"
            " whose product with the processes is the recorded one"
        )
    return {"batch": batch, "grad_accum": accum}


def _fingerprint_of_file(path: str) -> str:
    from mhe_edge.text.tokenizer import load_tokenizer

    return tokenizer_fingerprint(load_tokenizer(Path(path)))
