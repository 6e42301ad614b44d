"""Transformers in the manner of nanoGPT: an encoder (bidirectional, BERT-style) and a causal decoder.

One config covers the shapes in use today: learned or rotary positions, LayerNorm or RMSNorm placed
before each sublayer (GPT-2, Llama) or after each residual add (BERT), GELU or SwiGLU MLPs, biases on
or off, and tied input/output embeddings.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mhe_edge.config import ModelConfig
from mhe_edge.models.attention import KVCache, SelfAttention, rope_tables


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
        return self.fc_out(F.gelu(self.fc_in(x), approximate="tanh" if self.kind == "gelu_tanh" else "none"))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.ln_attn = make_norm(config)
        self.attn = SelfAttention(config)
        self.ln_mlp = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, past=None, attn_bias=None, causal=False, rope=None) -> tuple[torch.Tensor, KVCache]:
        if self.pre_norm:  # x + f(norm(x))
            a, present = self.attn(self.ln_attn(x), past=past, attn_bias=attn_bias, causal=causal, rope=rope)
            x = x + a
            return x + self.mlp(self.ln_mlp(x)), present
        a, present = self.attn(x, past=past, attn_bias=attn_bias, causal=causal, rope=rope)  # norm(x + f(x))
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

    def embed(self, input_ids: torch.Tensor, past_len: int | torch.SymInt = 0):
        """(B, T, d_model) embeddings, and the RoPE tables (cos, sin) for these positions (None without RoPE)."""
        T = input_ids.shape[1]
        positions = torch.arange(past_len, past_len + T, device=input_ids.device)  # (T,)
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
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
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


class Decoder(Transformer):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(
        self, input_ids: torch.Tensor, past_key_values: list[KVCache] | None = None
    ) -> tuple[torch.Tensor, list[KVCache]]:
        """input_ids (B, T); past_key_values: per layer (keys, values), each (B, kv_heads, P, head_dim).

        Returns logits (B, T, vocab) and the present cache, each (B, kv_heads, P + T, head_dim).
        """
        assert input_ids.dim() == 2
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        if past_key_values is not None:
            assert len(past_key_values) == len(self.blocks)
        x, rope = self.embed(input_ids, past_len)
        present = []
        for i, block in enumerate(self.blocks):
            past = None if past_key_values is None else past_key_values[i]
            x, layer_present = block(x, past=past, causal=True, rope=rope)
            present.append(layer_present)
        x = self.final_norm(x)
        logits = F.linear(x, self.tok_emb.weight) if self.config.tie_embeddings else self.lm_head(x)
        return logits, present


def build_model(config: ModelConfig, seed: int | None = None) -> Transformer:
    """A randomly initialised model for `config` (seeded when `seed` is given), in eval mode."""
    if seed is not None:
        torch.manual_seed(seed)
    model = (Decoder if config.arch == "decoder" else Encoder)(config)
    return model.eval()
