"""Numerical parity records: every comparison is recorded, every failure collected before raising.

An output passes when its largest absolute difference is within `atol + rtol * scale`, where `scale` is
the reference output's largest magnitude. fp32 rounding grows with the values themselves: a model with a
large tied vocabulary has logits in the hundreds, and an honest export differs from PyTorch by ~2e-7 of
that (2e-4 at logits of 860), past any fixed atol; a wrong graph differs by ~1e-3 of it or more. The
defaults leave that fp32 error 50x room and still catch a fold that is 1% off in one head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from mhe_edge import options
from mhe_edge.contract import ATTENTION_MASK, INPUT_IDS, output_names, past_names, present_for
from mhe_edge.errors import ParityError


@dataclass
class ParityRecord:
    case: str  # which inputs, e.g. "prefill B=3 T=5 P=0"
    output: str  # output name
    max_abs_diff: float
    max_rel_diff: float
    dtype: str
    atol: float
    argmax_agreement: float | None = None  # for logits: share of positions whose top token matches
    min_argmax_agreement: float | None = None  # required share, when the check asks for one
    rtol: float = 0.0  # allowed difference per unit of `scale`
    scale: float = 0.0  # the reference output's largest magnitude

    @property
    def allowed(self) -> float:
        """The largest difference this output may show: atol + rtol * scale."""
        return self.atol + self.rtol * self.scale

    @property
    def passed(self) -> bool:
        close = bool(np.isfinite(self.max_abs_diff)) and self.max_abs_diff <= self.allowed
        agrees = (
            self.min_argmax_agreement is None
            or (self.argmax_agreement or 0.0) >= self.min_argmax_agreement
        )
        return close and agrees

    def to_dict(self) -> dict:
        return {**asdict(self), "allowed": self.allowed, "passed": self.passed}


DEFAULT_ATOL = options.ATOL.default  # fp32: absolute, for outputs near zero (1e-4)
DEFAULT_RTOL = options.RTOL.default  # fp32: per unit of the output's largest magnitude (1e-5)


def compare_output(
    case: str,
    name: str,
    got,
    want,
    atol: float,
    min_argmax_agreement: float | None = None,
    rtol: float = 0.0,
) -> ParityRecord:
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        return ParityRecord(
            case,
            f"{name} (shape {got.shape} vs {want.shape})",
            float("inf"),
            float("inf"),
            str(got.dtype),
            atol,
            rtol=rtol,
        )
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    abs_diff = float(diff.max()) if diff.size else 0.0
    rel = diff / np.maximum(np.abs(want.astype(np.float64)), 1e-6)
    rel_diff = float(rel.max()) if rel.size else 0.0
    scale = float(np.abs(want.astype(np.float64)).max()) if want.size else 0.0
    agreement = None
    if name == "logits" and got.size:
        agreement = float(np.mean(got.argmax(-1) == want.argmax(-1)))
    return ParityRecord(
        case,
        name,
        abs_diff,
        rel_diff,
        str(got.dtype),
        atol,
        agreement,
        min_argmax_agreement if agreement is not None else None,
        rtol,
        scale if np.isfinite(scale) else 0.0,
    )


def max_abs_diff(records: list[ParityRecord]) -> float:
    return max((r.max_abs_diff for r in records), default=0.0)


class ParityChecked:
    """For reports that carry `parity` records: the worst difference, and the step timings' total."""

    parity: list[ParityRecord]
    seconds: dict[str, float]

    @property
    def max_abs_diff(self) -> float:
        return max_abs_diff(self.parity)

    @property
    def total_seconds(self) -> float:
        return round(sum(self.seconds.values()), 3)


def argmax_agreement(records: list[ParityRecord]) -> float | None:
    shares = [r.argmax_agreement for r in records if r.argmax_agreement is not None]
    return min(shares) if shares else None


def raise_on_failures(records: list[ParityRecord], what: str) -> None:
    failures = [r for r in records if not r.passed]
    if failures:
        worst = max(failures, key=lambda r: r.max_abs_diff / max(r.allowed, 1e-300))
        raise ParityError(
            f"{what}: {len(failures)} of {len(records)} outputs exceed their tolerance; worst "
            f"{worst.output} in '{worst.case}' differs by {worst.max_abs_diff:.3g}, allowed "
            f"{worst.allowed:.3g} (atol {worst.atol:g} + rtol {worst.rtol:g} x its scale {worst.scale:.3g})",
            records,
        )


# --- Runners: anything that maps ONNX-style feeds to named outputs, so PyTorch and ONNX Runtime compare alike.

Runner = Callable[[dict], dict]  # feeds by input name -> outputs by output name


def torch_runner(model) -> Runner:
    """The PyTorch reference model behind the ONNX I/O contract (names from the export's metadata)."""
    import torch

    config = model.config
    names = output_names(config)

    def run(feeds):
        ids = torch.from_numpy(feeds[INPUT_IDS])
        with torch.no_grad():
            if config.arch == "encoder":
                outputs = [model(ids, torch.from_numpy(feeds[ATTENTION_MASK]))]
            else:
                flat = [torch.from_numpy(feeds[name]) for name in past_names(config.n_layers)]
                past = list(zip(flat[0::2], flat[1::2]))  # (key, value) per layer
                mask = feeds.get(ATTENTION_MASK)
                logits, present = model(
                    ids, past, attention_mask=None if mask is None else torch.from_numpy(mask)
                )
                outputs = [logits, *[t for kv in present for t in kv]]
        return {name: t.numpy() for name, t in zip(names, outputs)}

    return run


def ort_runner(session) -> Runner:
    """A session as a runner; float feeds are cast to the dtype each input declares (fp16 models take fp16)."""
    names = [o.name for o in session.get_outputs()]
    wanted = {
        i.name: np.float16 if i.type == "tensor(float16)" else None for i in session.get_inputs()
    }

    def run(feeds):
        feeds = {
            k: v.astype(wanted[k]) if wanted.get(k) is not None and v.dtype != wanted[k] else v
            for k, v in feeds.items()
        }
        return dict(zip(names, session.run(None, feeds)))

    return run


def parity_cases(config, batched_chunks: bool = True) -> list[tuple[str, int, list[int]]]:
    """(name, batch, chunk lengths): decoders run the chunks in turn, each feeding its own cache back.
    `batched_chunks=False` runs the chunked prefill at batch 1 (GroupQueryAttention without query_seqlens)."""
    L = config.max_seq_len
    if config.arch == "encoder":
        return [("padded batch B=2 T=7", 2, [min(7, L)]), ("single B=1 T=13", 1, [min(13, L)])]
    prefill = max(1, min(5, L - 3))
    cases = [
        ("empty past B=2 T=7", 2, [min(7, L)]),
        ("prefill B=3 T=5 then 3 cached steps", 3, [prefill] + [1] * min(3, L - prefill)),
    ]
    if L >= 8:
        batch = 2 if batched_chunks else 1
        cases.append((f"chunked prefill B={batch} T=3+3 then 1 step", batch, [3, 3, 1]))
    return cases


def _parity_steps(config, runners: dict[str, Runner], seed: int, float_dtype, batched_chunks: bool):
    """Every runner through the same seeded parity cases: yields (label, {who: outputs}) per run, each
    decoder runner feeding its own cache back."""
    rng = np.random.default_rng(seed)
    for case, batch, chunks in parity_cases(config, batched_chunks):
        if config.arch == "encoder":
            T = chunks[0]
            mask = np.ones((batch, T), dtype=np.int64)
            if batch > 1 and T > 2:
                mask[1, T - 2 :] = 0  # padding; every row keeps real tokens
            feeds = {
                INPUT_IDS: rng.integers(0, config.vocab_size, (batch, T)),
                ATTENTION_MASK: mask,
            }
            yield case, {who: run(feeds) for who, run in runners.items()}
            continue
        empty = np.zeros((batch, config.kv_heads, 0, config.head_dim), dtype=float_dtype)
        pasts = past_names(config.n_layers)
        caches = {who: dict.fromkeys(pasts, empty) for who in runners}
        seen = 0
        for step, T in enumerate(chunks):
            ids = rng.integers(0, config.vocab_size, (batch, T))
            seen += T
            mask = np.ones((batch, seen), dtype=np.int64)  # padded batches: tests/test_padding.py
            outputs = {}
            for who, run in runners.items():
                outputs[who] = run({INPUT_IDS: ids, ATTENTION_MASK: mask, **caches[who]})
                caches[who] = {p: outputs[who][present_for(p)] for p in pasts}
            yield (f"{case} (step {step})" if len(chunks) > 1 else case), outputs


def recorded_runner(
    config, runner: Runner, seed: int = 0, float_dtype=np.float32, batched_chunks: bool = True
) -> Runner:
    """Run `runner` through the parity cases now and return a runner that replays its outputs, so the
    model behind it can be freed before the candidate is loaded (a process then never holds both).
    The replay is for `compare_runners` with the same seed, float type and cases; it refuses any other
    sequence of inputs."""
    seen_ids: list[np.ndarray] = []

    def noting(feeds):
        seen_ids.append(feeds[INPUT_IDS])
        return runner(feeds)

    recorded = [
        (outputs["reference"], seen_ids[-1])
        for _label, outputs in _parity_steps(
            config, {"reference": noting}, seed, float_dtype, batched_chunks
        )
    ]
    position = iter(recorded)

    def replay(feeds):
        try:
            outputs, ids = next(position)
        except StopIteration:
            raise RuntimeError("the recorded reference has no more runs") from None
        if not np.array_equal(ids, feeds[INPUT_IDS]):
            raise RuntimeError("the recorded reference ran on other inputs")
        return outputs

    return replay


def compare_runners(
    config,
    candidate: Runner,
    reference: Runner,
    atol: float,
    seed: int = 0,
    float_dtype=np.float32,
    min_argmax_agreement: float | None = None,
    batched_chunks: bool = True,
    rtol: float = 0.0,
) -> list[ParityRecord]:
    """Run both on the same seeded inputs; one record per output per step, each within `atol + rtol *
    the reference output's largest magnitude`. Never raises on a mismatch."""
    return [
        compare_output(
            label,
            name,
            outputs["candidate"][name],
            outputs["reference"][name],
            atol,
            min_argmax_agreement,
            rtol,
        )
        for label, outputs in _parity_steps(
            config,
            {"candidate": candidate, "reference": reference},
            seed,
            float_dtype,
            batched_chunks,
        )
        for name in outputs["reference"]
    ]
