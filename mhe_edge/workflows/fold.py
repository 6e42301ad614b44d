"""`mhe-edge fold`: an MHE model as a standard transformers checkpoint with one KV head, exactly.

MHE folds into single-KV-head attention (docs/mhe-algebra.md; the same identities as the ONNX fold pass
and the training core): MUL's head i queries with q * E_Q[i] * E_K[i] against the one shared key, and
E_V folds into the output projection's columns; ADD's head i queries with q + E_Q[i] (E_K cancels in the
softmax) and E_V folds into the output bias. So an MHE model *is* a multi-query model, written here in a
family every transformers-based tool knows:

| our model                                    | family                          |
| learned positions, LayerNorm, GELU (pre-norm) | GPTBigCode, `multi_query=True`  |
| RoPE, RMSNorm, SwiGLU (pre-norm)             | Llama, `num_key_value_heads=1`  |

With RoPE the rotation sits between the projection and the head embedding: an ADD head's constant
E_Q[i] would be rotated by Llama (its bias is inside the rotation), and a MUL head's scale commutes with
the rotation only when it is equal on both halves of every rotation pair, which a model built with
`rope_pair_tied_embeddings` (`--rope-pair-tied-embeddings`) holds by construction. What no family represents
exactly is refused naming why, before anything is written. The fold is checked in float64 against the
MHE model (reference core, per head as the paper defines it), then in float32 and by greedy tokens in
transformers itself, before the folder appears.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mhe_edge.errors import ExportError, ParityError
from mhe_edge.results import Result

FLOAT64_ATOL = 1e-9  # an exact rewrite: rounding only
FLOAT32_ATOL = 1e-4
CHECK_NEW_TOKENS = 12
PAIR_RTOL = 1e-6  # a MUL scale "equal within a rotation pair" up to float rounding


class FoldRefused(ExportError):
    """A model no standard family represents exactly."""


@dataclass
class FoldReport(Result):
    folder: str
    model_type: str  # the transformers family: "gpt_bigcode" or "llama"
    attention: str  # the source model's attention kind
    num_key_value_heads: int
    float64_max_abs_diff: float  # logits, transformers against the MHE model
    float32_max_abs_diff: float
    reread_max_abs_diff: (
        float  # the folder read back by mhe-edge (registry family) against the MHE model
    )
    greedy_tokens: list[int]  # transformers' greedy ids, equal to mhe-edge's
    files: list[str] = field(default_factory=list)


def family_of(config) -> str:
    """The transformers model_type a model folds to, or FoldRefused saying why none fits."""
    if config.arch != "decoder":
        raise FoldRefused("fold writes causal LMs; this model is an encoder")
    if config.norm_placement != "pre" or config.embedding_norm:
        raise FoldRefused("fold needs norms before each sublayer and none after the embeddings")
    if config.position == "learned":
        if config.norm != "layernorm" or config.mlp not in ("gelu", "gelu_tanh"):
            raise FoldRefused(
                "learned positions fold to GPTBigCode, which has LayerNorm and a GELU MLP;"
                f" this model has {config.norm} and {config.mlp}"
            )
        if config.kv_heads != 1:
            raise FoldRefused(
                f"GPTBigCode is multi-query (one KV head); this {config.attention} model has {config.kv_heads}"
            )
        if config.n_heads * config.head_dim != config.d_model:
            raise FoldRefused("GPTBigCode needs n_heads * head_dim == d_model")
        return "gpt_bigcode"
    if config.norm != "rmsnorm" or config.mlp != "swiglu":
        raise FoldRefused(
            f"RoPE folds to Llama, which has RMSNorm and SwiGLU; this model has {config.norm} and {config.mlp}"
        )
    if config.attention == "mhe-add":
        raise FoldRefused(
            "MHE-ADD with RoPE has no standard family: its folded per-head query constant E_Q[i] comes after"
            " the rotation, where Llama's query bias would be rotated with the query"
        )
    return "llama"


def _folded_attention(attn, config) -> dict[str, torch.Tensor]:
    """One layer's q (n*d rows), k, v, o weights and biases in float64, MHE's head embeddings folded in."""
    n, d = config.n_heads, config.head_dim
    wq, wk, wv, wo = (
        p.weight.detach().double() for p in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj)
    )
    zeros = torch.zeros

    def bias(linear, size):
        return (
            linear.bias.detach().double()
            if linear.bias is not None
            else zeros(size, dtype=torch.float64)
        )

    bq, bk, bv = (
        bias(attn.q_proj, wq.shape[0]),
        bias(attn.k_proj, wk.shape[0]),
        bias(attn.v_proj, wv.shape[0]),
    )
    bo = bias(attn.out_proj, wo.shape[0])
    if not config.is_mhe:
        return dict(wq=wq, bq=bq, wk=wk, bk=bk, wv=wv, bv=bv, wo=wo, bo=bo)
    e_q, e_k, e_v = (e.detach().double() for e in attn.head_embeddings())  # (n, d) each
    if config.attention == "mhe-mul":
        scale = (
            e_q * e_k
        )  # (n, d): head i's query is q * scale[i]; the softmax scale stays the family's
        if config.position == "rope":
            half = d // 2
            if not torch.allclose(scale[:, :half], scale[:, half:], rtol=PAIR_RTOL, atol=0):
                worst = (scale[:, :half] - scale[:, half:]).abs().max().item()
                raise FoldRefused(
                    "MHE-MUL with RoPE folds exactly only when each head's query scale E_Q*E_K is equal on"
                    f" both halves of every rotation pair; this model's differ by up to {worst:.3g}: train"
                    " it with --rope-pair-tied-embeddings to keep it foldable"
                )
            scale = torch.cat([scale[:, :half], scale[:, :half]], dim=1)
        wq_heads = (wq[None] * scale[:, :, None]).reshape(n * d, -1)  # (n*d, D)
        bq_heads = (bq[None] * scale).reshape(n * d)
        wo = wo * e_v.reshape(1, n * d)  # diag(E_V[i]) on head i's columns of W_O
    else:  # add: learned positions only (family_of refuses RoPE)
        wq_heads = wq.repeat(n, 1)
        bq_heads = (bq[None] + e_q).reshape(n * d)
        bo = bo + wo @ e_v.reshape(
            n * d
        )  # the softmax rows sum to 1: E_V passes through as a constant
    return dict(wq=wq_heads, bq=bq_heads, wk=wk, bk=bk, wv=wv, bv=bv, wo=wo, bo=bo)


def family_config(config) -> dict[str, Any]:
    """config.json of the family a model folds to (model_type, sizes, the context length as
    max_position_embeddings); FoldRefused where no family represents it."""
    family = family_of(config)
    common: dict[str, Any] = {
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "torch_dtype": "float32",
    }
    if family == "gpt_bigcode":
        return dict(
            model_type="gpt_bigcode",
            architectures=["GPTBigCodeForCausalLM"],
            n_embd=config.d_model,
            n_layer=config.n_layers,
            n_head=config.n_heads,
            n_inner=config.d_ff,
            n_positions=config.max_seq_len,
            multi_query=True,
            activation_function="gelu" if config.mlp == "gelu" else "gelu_pytorch_tanh",
            layer_norm_epsilon=config.layer_norm_eps,
            scale_attn_weights=True,
            attention_softmax_in_fp32=True,
            scale_attention_softmax_in_fp32=True,
            embd_pdrop=0.0,
            resid_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
    attention_bias = config.qkv_bias or config.out_bias or config.attention == "mhe-add"
    return dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        hidden_size=config.d_model,
        intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.kv_heads,
        head_dim=config.head_dim,
        hidden_act="silu",
        rms_norm_eps=config.layer_norm_eps,
        rope_theta=config.rope_theta,
        rope_scaling=None,
        attention_bias=attention_bias,
        mlp_bias=config.mlp_bias,
        attention_dropout=0.0,
        **common,
    )


def folded_checkpoint(model) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json fields, float64 state dict in the family's names) for our model."""
    config = model.config
    family = family_of(config)
    state: dict[str, torch.Tensor] = {}
    sd = {k: v.detach().double() for k, v in model.state_dict().items()}
    hf = family_config(config)
    if family == "gpt_bigcode":
        state["transformer.wte.weight"] = sd["tok_emb.weight"]
        state["transformer.wpe.weight"] = sd["pos_emb.weight"]
        for i, block in enumerate(model.blocks):
            p, a = f"transformer.h.{i}.", _folded_attention(block.attn, config)
            state[p + "attn.c_attn.weight"] = torch.cat([a["wq"], a["wk"], a["wv"]])
            state[p + "attn.c_attn.bias"] = torch.cat([a["bq"], a["bk"], a["bv"]])
            state[p + "attn.c_proj.weight"], state[p + "attn.c_proj.bias"] = a["wo"], a["bo"]
            for ours, theirs in (("ln_attn", "ln_1"), ("ln_mlp", "ln_2")):
                state[p + theirs + ".weight"] = sd[f"blocks.{i}.{ours}.weight"]
                state[p + theirs + ".bias"] = sd[f"blocks.{i}.{ours}.bias"]
            for ours, theirs in (("fc_in", "c_fc"), ("fc_out", "c_proj")):
                w = sd[f"blocks.{i}.mlp.{ours}.weight"]
                state[p + f"mlp.{theirs}.weight"] = w
                state[p + f"mlp.{theirs}.bias"] = sd.get(
                    f"blocks.{i}.mlp.{ours}.bias", torch.zeros(w.shape[0], dtype=torch.float64)
                )
        state["transformer.ln_f.weight"], state["transformer.ln_f.bias"] = (
            sd["ln_f.weight"],
            sd["ln_f.bias"],
        )
    else:
        attention_bias = hf["attention_bias"]
        state["model.embed_tokens.weight"] = sd["tok_emb.weight"]
        for i, block in enumerate(model.blocks):
            p, a = f"model.layers.{i}.", _folded_attention(block.attn, config)
            for name, short in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("o_proj", "o")):
                state[p + f"self_attn.{name}.weight"] = a[f"w{short}"]
                if attention_bias:
                    state[p + f"self_attn.{name}.bias"] = a[f"b{short}"]
            state[p + "input_layernorm.weight"] = sd[f"blocks.{i}.ln_attn.weight"]
            state[p + "post_attention_layernorm.weight"] = sd[f"blocks.{i}.ln_mlp.weight"]
            for ours, theirs in (
                ("gate", "gate_proj"),
                ("fc_in", "up_proj"),
                ("fc_out", "down_proj"),
            ):
                state[p + f"mlp.{theirs}.weight"] = sd[f"blocks.{i}.mlp.{ours}.weight"]
                if config.mlp_bias:
                    state[p + f"mlp.{theirs}.bias"] = sd[f"blocks.{i}.mlp.{ours}.bias"]
        state["model.norm.weight"] = sd["ln_f.weight"]
    if not config.tie_embeddings:
        state["lm_head.weight"] = sd["lm_head.weight"]
    return hf, state


def _hf_model(hf: dict[str, Any], state: dict[str, torch.Tensor], dtype: torch.dtype):
    """The transformers model for a folded checkpoint, built from its config, holding `state`. In float64
    the family's own float32 upcasts (Llama's RMSNorm, GPTBigCode's softmax) are lifted, so that the check
    sees the fold's rounding only; for float32 and wider they change nothing else."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {
        k: v for k, v in hf.items() if k not in ("model_type", "architectures", "torch_dtype")
    }
    exact = dtype == torch.float64
    if exact and hf["model_type"] == "gpt_bigcode":
        fields.update(attention_softmax_in_fp32=False, scale_attention_softmax_in_fp32=False)
    config = AutoConfig.for_model(hf["model_type"], **fields)
    # sdpa: eager attention takes its softmax in float32 whatever the dtype
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(dtype).eval()
    missing, unexpected = model.load_state_dict(
        {k: v.to(dtype) for k, v in state.items()}, strict=False
    )
    tied = {"lm_head.weight"} if hf["tie_word_embeddings"] else set()
    if set(missing) - tied or unexpected:
        raise ExportError(
            f"the folded checkpoint does not fit {hf['model_type']}:"
            f" missing {missing}, unexpected {unexpected}"
        )
    if exact:
        for name, module in list(model.named_modules()):
            if type(module).__name__.endswith("RMSNorm"):  # computes in float32 whatever its dtype
                norm = torch.nn.RMSNorm(
                    module.weight.shape, eps=module.variance_epsilon, dtype=dtype
                )
                norm.weight.data.copy_(module.weight.data)
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent), attr, norm)
    return model


def _check_ids(config) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    length = min(16, config.max_seq_len - CHECK_NEW_TOKENS)
    return torch.randint(0, config.vocab_size, (2, max(1, length)), generator=generator)


def _max_diff(ours, theirs, ids) -> float:
    with torch.no_grad():
        return (ours(ids).logits - theirs(ids).logits).abs().max().item()


def _greedy_hf(model, ids: torch.Tensor, new_tokens: int, eos: int | None) -> list[list[int]]:
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos if eos is not None else 0,
        )
    return _until_eos(out[:, ids.shape[1] :].tolist(), eos)


def _until_eos(rows: list[list[int]], eos: int | None) -> list[list[int]]:
    return [row[: row.index(eos) + 1] if eos is not None and eos in row else row for row in rows]


def fold(model: str | os.PathLike, output: str | os.PathLike, *, force: bool = False) -> FoldReport:
    """Write `model` (a checkpoint or model folder) as a transformers checkpoint with one KV head.

    Example: `mhe_edge.fold("my-model", "my-model-mqa").model_type` (then
    `transformers.AutoModelForCausalLM.from_pretrained("my-model-mqa")`)
    """
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers' loading bars would interleave with ours
    try:
        return _fold(Path(model), output, force)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _fold(source: Path, output, force: bool) -> FoldReport:
    import copy

    from transformers import AutoModelForCausalLM

    from mhe_edge.edge.hf_clients import write_generation_config, write_tokenizer
    from mhe_edge.files import check_output, staged_output
    from mhe_edge.models.checkpoint import load_model
    from mhe_edge.text.tokenizer import has_tokenizer, load_tokenizer

    folder = check_output(output, force=force, folder=True, inputs=[source])
    ours = load_model(source)
    config = ours.config
    hf, state = folded_checkpoint(ours)  # refuses before anything is written
    ids = _check_ids(config)
    ours64 = copy.deepcopy(ours).double()
    diff64 = _max_diff(ours64, _hf_model(hf, state, torch.float64), ids)
    if not diff64 <= FLOAT64_ATOL:
        raise ParityError(
            f"the folded {hf['model_type']} differs from the MHE model by {diff64:.3g} in float64"
        )
    tokenizer = load_tokenizer(source) if source.is_dir() and has_tokenizer(source) else None
    with staged_output(folder, force=force, folder=True) as stage:
        _hf_model(hf, state, torch.float32).save_pretrained(stage)
        config_file = stage / "config.json"
        saved = json.loads(config_file.read_text())
        saved["max_position_embeddings"] = config.max_seq_len  # where clients read the context
        config_file.write_text(json.dumps(saved, indent=2) + "\n")
        write_generation_config(stage, config)
        if tokenizer is not None:
            write_tokenizer(stage, tokenizer, config.max_seq_len)
        theirs = AutoModelForCausalLM.from_pretrained(stage, attn_implementation="eager").eval()
        diff32 = _max_diff(ours, theirs, ids)
        if not diff32 <= FLOAT32_ATOL:
            raise ParityError(
                f"transformers' {hf['model_type']} differs from the MHE model by {diff32:.3g} (fp32)"
            )
        # and mhe-edge reads the folder back, through the model-family registry, as the MQA model it is
        reread = _max_diff(ours, load_model(stage), ids)
        if not reread <= FLOAT32_ATOL:
            raise ParityError(f"the folded folder, read back, differs by {reread:.3g}")
        eos = config.eos_token_id
        want = _until_eos(ours.generate(ids, CHECK_NEW_TOKENS).tolist(), eos)  # type: ignore[operator]
        got = _greedy_hf(theirs, ids, CHECK_NEW_TOKENS, eos)
        if got != want:
            raise ParityError(f"transformers generated {got}, the MHE model {want}")
        files = sorted(p.name for p in stage.iterdir())
    return FoldReport(
        folder=str(folder),
        model_type=hf["model_type"],
        attention=config.attention,
        num_key_value_heads=1 if config.is_mhe else config.kv_heads,
        float64_max_abs_diff=diff64,
        float32_max_abs_diff=diff32,
        reread_max_abs_diff=reread,
        greedy_tokens=got[0],
        files=files,
    )
