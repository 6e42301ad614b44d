"""Transformers in the manner of nanoGPT: an encoder (bidirectional, BERT-style) and a causal decoder.

One config covers the shapes in use today: learned or rotary positions, LayerNorm or RMSNorm placed
before each sublayer (GPT-2, Llama) or after each residual add (BERT), GELU or SwiGLU MLPs, biases on
or off, and tied input/output embeddings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from mhe_edge.config import ModelConfig
from mhe_edge.models.attention import KVCache, SelfAttention, rope_tables

if TYPE_CHECKING:
    from mhe_edge.text.sampling import SamplingOptions


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.layer_norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.kind = config.mlp
        if self.kind == "swiglu":
            self.gate = nn.Linear(config.d_model, config.d_ff, bias=config.mlp_bias)
        self.fc_in = nn.Linear(config.d_model, config.d_ff, bias=config.mlp_bias)
        self.fc_out = nn.Linear(config.d_ff, config.d_model, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d_model)
        if self.kind == "swiglu":
            return self.fc_out(F.silu(self.gate(x)) * self.fc_in(x))
        return self.fc_out(
            F.gelu(self.fc_in(x), approximate="tanh" if self.kind == "gelu_tanh" else "none")
        )


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.ln_attn = make_norm(config)
        self.attn = SelfAttention(config)
        self.ln_mlp = make_norm(config)
        self.mlp = MLP(config)

    def forward(
        self, x, past=None, attn_bias=None, causal=False, rope=None
    ) -> tuple[torch.Tensor, KVCache]:
        if self.pre_norm:  # x + f(norm(x))
            a, present = self.attn(
                self.ln_attn(x), past=past, attn_bias=attn_bias, causal=causal, rope=rope
            )
            x = x + a
            return x + self.mlp(self.ln_mlp(x)), present
        a, present = self.attn(
            x, past=past, attn_bias=attn_bias, causal=causal, rope=rope
        )  # norm(x + f(x))
        x = self.ln_attn(x + a)
        return self.ln_mlp(x + self.mlp(x)), present


class Transformer(nn.Module):
    """Token (and learned position) embeddings, blocks, and a final norm when norms come first."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        if config.position == "learned":
            self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model)
        if config.embedding_norm:
            self.ln_emb = make_norm(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        if config.norm_placement == "pre":
            self.ln_f = make_norm(config)

    def embed(
        self,
        input_ids: torch.Tensor,
        past_len: int | torch.SymInt = 0,
        position_ids: torch.Tensor | None = None,
    ):
        """(B, T, d_model) embeddings, and the RoPE tables (cos, sin) for these positions (None without RoPE).

        Positions are past_len, past_len + 1, ... unless `position_ids` (B, T) says otherwise (left padding)."""
        T = input_ids.shape[1]
        positions = (
            # symbolic while tracing: torch.arange takes SymInts, its stubs do not say so
            torch.arange(past_len, past_len + T, device=input_ids.device)  # type: ignore[arg-type]
            if position_ids is None
            else position_ids
        )  # (T,) or (B, T)
        x = self.tok_emb(input_ids)
        rope = None
        if self.config.position == "learned":
            x = x + self.pos_emb(positions)
        else:
            rope = rope_tables(positions, self.config.head_dim, self.config.rope_theta)
        if self.config.embedding_norm:
            x = self.ln_emb(x)
        return x, rope

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_f(x) if self.config.norm_placement == "pre" else x


class Encoder(Transformer):
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids (B, T) int64; attention_mask (B, T), 1 = attend, 0 = padding. Returns (B, T, d_model)."""
        assert input_ids.dim() == 2
        x, rope = self.embed(input_ids)
        attn_bias = None
        if attention_mask is not None:
            keep = attention_mask[:, None, None, :].to(x.dtype)  # (B, 1, 1, T)
            # A large finite negative rather than -inf: a fully padded row stays finite, not NaN.
            attn_bias = (1.0 - keep) * torch.finfo(x.dtype).min
        for block in self.blocks:
            x, _ = block(x, attn_bias=attn_bias, rope=rope)
        return self.final_norm(x)


class DecoderOutput(tuple):
    """(logits, past_key_values), as a decoder has always returned, with `.loss` when labels were given
    (transformers' `outputs.loss`, `outputs.logits`, `outputs.past_key_values`)."""

    loss: torch.Tensor | None

    def __new__(
        cls, logits: torch.Tensor, past_key_values: list[KVCache], loss: torch.Tensor | None = None
    ):
        output = super().__new__(cls, (logits, past_key_values))
        output.loss = loss
        return output

    @property
    def logits(self) -> torch.Tensor:
        return self[0]

    @property
    def past_key_values(self) -> list[KVCache]:
        return self[1]


IGNORE_INDEX = -100  # label value that takes no part in the loss (transformers' convention)


class Decoder(Transformer):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        past_key_values: list[KVCache] | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """input_ids (B, T); past_key_values: per layer (keys, values), each (B, kv_heads, P, head_dim);
        attention_mask (B, P + T), 1 = token, 0 = padding (left padding: positions count real tokens only);
        labels (B, T): the ids to predict, as transformers takes them (shifted inside; -100 is ignored).

        Returns (logits (B, T, vocab), the present cache, each (B, kv_heads, P + T, head_dim)), with `.loss`
        (mean cross-entropy over the predicted positions) when labels are given.
        """
        assert input_ids.dim() == 2
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        if past_key_values is not None:
            assert len(past_key_values) == len(self.blocks)
        position_ids = attn_bias = None
        if attention_mask is not None:
            T = input_ids.shape[1]
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]  # (B, T)
            keep = attention_mask[:, None, None, :].bool()  # (B, 1, 1, P + T)
            attn_bias = torch.zeros(
                keep.shape, dtype=self.tok_emb.weight.dtype, device=input_ids.device
            )
            attn_bias = attn_bias.masked_fill(
                ~keep, torch.finfo(attn_bias.dtype).min
            )  # finite: pad rows stay finite
        x, rope = self.embed(input_ids, past_len, position_ids)
        present = []
        for i, block in enumerate(self.blocks):
            past = None if past_key_values is None else past_key_values[i]
            x, layer_present = block(x, past=past, attn_bias=attn_bias, causal=True, rope=rope)
            present.append(layer_present)
        x = self.final_norm(x)
        logits = F.linear(x, self.tok_emb.weight) if self.config.tie_embeddings else self.lm_head(x)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(),
                labels[:, 1:].flatten(),
                ignore_index=IGNORE_INDEX,
            )
        return DecoderOutput(logits, present, loss)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        attention_mask: torch.Tensor | None = None,
        sampling: SamplingOptions | None = None,
    ) -> torch.Tensor:
        """The PyTorch reference for `mhe-edge generate`: prefill, then one token per step with the cache.

        input_ids (B, T), left-padded when `attention_mask` is given; greedy unless `sampling` says otherwise
        (`mhe_edge.text.sampling`, the same picker the ONNX runtime uses). Returns the new ids (B, N): a row
        stops growing at its EOS and is padded with it.
        """
        from mhe_edge.text.sampling import TokenPicker

        picker = TokenPicker(
            sampling, self.config.eos_token_id, input_ids.shape[0], history=input_ids.tolist()
        )
        mask = attention_mask
        logits, cache = self(input_ids, attention_mask=mask)
        tokens: list[torch.Tensor] = []
        while len(tokens) < max_new_tokens and not picker.finished:
            nxt = torch.as_tensor(
                picker.pick(logits[:, -1].float().numpy()), device=input_ids.device
            )[:, None]  # (B, 1)
            tokens.append(nxt)
            if len(tokens) == max_new_tokens or picker.finished:
                break
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            logits, cache = self(nxt, cache, attention_mask=mask)
        return torch.cat(tokens, dim=1) if tokens else input_ids.new_zeros((input_ids.shape[0], 0))


def build_model(config: ModelConfig, seed: int | None = None) -> Transformer:
    """A randomly initialised model for `config` (seeded when `seed` is given), in eval mode (call `.train()`
    to train it: nothing in these models behaves differently, but optimizers and hooks expect the flag)."""
    if seed is not None:
        torch.manual_seed(seed)
    model = (Decoder if config.arch == "decoder" else Encoder)(config)
    return model.eval()
