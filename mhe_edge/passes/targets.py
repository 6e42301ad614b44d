"""The optimize targets: which passes each runs, at which opset, and the oldest ONNX Runtime that loads it.

| target   | attention                                   | opset (allowed) | ONNX Runtime | for |
| std      | one standard Attention per layer            | 23 (as exported)| >= 1.23      | current
runtimes, OpenVINO >= 2026.3 |
| ort      | com.microsoft.GroupQueryAttention (decoders)| 21 (17-21)      | >= 1.20      | the ORT
builds apps ship; 1.32 with query_seqlens |
| portable | written out in basic ops, no functions      | 17 (17-22)      | >= 1.16      | ORT
1.16+, onnxruntime-node, OpenVINO, onnx.reference |
"""

from __future__ import annotations

import onnx_ir as ir

from mhe_edge.contract import MIN_ORT_FOR_OPSET
from mhe_edge.errors import RequestError
from mhe_edge.options import TARGET

TARGETS = TARGET.choices
DEFAULT_OPSET = {"std": 23, "ort": 21, "portable": 17}
OPSET_RANGE = {"std": (23, 23), "ort": (17, 21), "portable": (17, 22)}
TARGET_IR_VERSION = {"ort": 10, "portable": 8}
MIN_ORT_QUERY_SEQLENS = "1.32"  # GroupQueryAttention's query_seqlens input
MIN_ORT_INT4 = "1.20"  # com.microsoft.GatherBlockQuantized (int4 embedding tables) on the CPU
MIN_ORT_GQA = (
    "1.20"  # GroupQueryAttention as lowered here (CPU, single-KV-head, seqlens from shapes)
)


def check_target(target: str, opset: int | None, query_seqlens: bool) -> int:
    """The opset the target will have, or a RequestError for a combination that cannot be built."""
    TARGET.check(target)
    low, high = OPSET_RANGE[target]
    opset = DEFAULT_OPSET[target] if opset is None else opset
    if not low <= opset <= high:
        raise RequestError(
            f"--target {target} takes --opset {low}"
            + (f" to {high}" if high != low else "")
            + f", not {opset}"
        )
    if query_seqlens and target != "ort":
        raise RequestError("--ort-query-seqlens is for --target ort")
    return opset


def min_onnxruntime(
    target: str | None, opset: int, query_seqlens: bool = False, int4: bool = False
) -> str:
    from packaging.version import Version

    if target == "ort":
        oldest = (
            MIN_ORT_QUERY_SEQLENS
            if query_seqlens
            else max(MIN_ORT_GQA, MIN_ORT_FOR_OPSET[opset], key=Version)
        )
    else:
        oldest = MIN_ORT_FOR_OPSET[opset]
    return max(oldest, MIN_ORT_INT4, key=Version) if int4 else oldest


def build_passes(
    target: str = "std",
    fp16: bool = False,
    int8: bool = False,
    opset: int | None = None,
    query_seqlens: bool = False,
    int4: bool = False,
    int4_block_size: int = 32,
    int4_symmetric: bool = True,
    int4_accuracy_level: int = 4,
    int4_algorithm: str = "rtn",
    int4_calibration_ids: list | None = None,
    int4_share_tied_table: bool = False,
) -> list[ir.passes.PassBase]:
    """The pass list for a target and precision, in order (each pass one file in mhe_edge/passes/)."""
    from mhe_edge.passes.cleanup import CleanupPass
    from mhe_edge.passes.fold_head_embeddings import FoldHeadEmbeddingsPass

    opset = check_target(target, opset, query_seqlens)
    if fp16 + int8 + int4 > 1:
        raise RequestError("choose one of --fp16, --int8 and --int4")
    if not int4 and (
        (int4_algorithm, int4_accuracy_level, int4_block_size) != ("rtn", 4, 32)
        or int4_calibration_ids
        or int4_share_tied_table
    ):
        raise RequestError(
            "--int4-algorithm, --int4-accuracy-level, --int4-block-size,"
            " --int4-calibration-text and --int4-share-tied-table need --int4"
        )
    if int4 and target == "portable":
        raise RequestError(
            "--int4 writes com.microsoft.MatMulNBits (ONNX Runtime only): use --target ort or std, not portable"
        )
    passes: list[ir.passes.PassBase] = [FoldHeadEmbeddingsPass()]
    if target == "ort":
        from mhe_edge.passes.lower_to_ort import LowerToGroupQueryAttentionPass

        passes.append(LowerToGroupQueryAttentionPass(query_seqlens=query_seqlens))
    if target in (
        "ort",
        "portable",
    ):  # what GroupQueryAttention does not take (encoders) is written out
        from mhe_edge.passes.decompose_attention import DecomposeAttentionPass

        passes.append(DecomposeAttentionPass())
    passes.append(CleanupPass())
    if (
        target == "ort"
    ):  # Q/K/V in one MatMul, rotary inside GroupQueryAttention; residual add + RMSNorm
        # -> ONNX Runtime's SkipSimplifiedLayerNormalization (as onnxruntime-genai's model builder writes)
        from mhe_edge.passes.fuse_gqa_inputs import FuseGqaInputsPass
        from mhe_edge.passes.fuse_skip_norm import FuseSkipRmsNormPass

        passes += [FuseGqaInputsPass(), FuseSkipRmsNormPass()]
    if fp16:
        from mhe_edge.passes.float16 import ConvertToFloat16Pass

        passes.append(ConvertToFloat16Pass())
    if int8:
        from mhe_edge.passes.quantize_int8 import DynamicQuantizeInt8Pass

        passes.append(DynamicQuantizeInt8Pass())
    if int4:
        from mhe_edge.passes.quantize_int4 import QuantizeInt4Pass

        passes.append(
            QuantizeInt4Pass(
                int4_block_size,
                int4_symmetric,
                int4_accuracy_level,
                int4_algorithm,
                int4_calibration_ids,
                share_tied_table=int4_share_tied_table,
            )
        )
    if target in TARGET_IR_VERSION:
        from mhe_edge.passes.to_opset import ConvertToOpsetPass

        passes.append(
            ConvertToOpsetPass(
                opset,
                TARGET_IR_VERSION[target],
                other_domains=("com.microsoft",) if target == "ort" else (),
                basic_norms=target == "portable",
            )
        )
    return passes
