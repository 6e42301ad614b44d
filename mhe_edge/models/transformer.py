"""Pre-LN transformers: a BERT-style encoder and a GPT-style causal decoder, in the manner of nanoGPT."""
from __future__ import annotations

import torch
from torch import nn

from mhe_edge.config import ModelConfig
from mhe_edge.models.attention import KVCache, SelfAttention


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.d_model, config.d_ff)
        self.act = nn.GELU()
        self.fc_out = nn.Linear(config.d_ff, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = SelfAttention(config)
        self.ln_mlp = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, past=None, attn_bias=None, causal=False) -> tuple[torch.Tensor, KVCache]:
        a, present = self.attn(self.ln_attn(x), past=past, attn_bias=attn_bias, causal=causal)
        x = x + a
        x = x + self.mlp(self.ln_mlp(x))
        return x, present


class Transformer(nn.Module):
    """Token and learned position embeddings, pre-LN blocks, final LayerNorm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def embed(self, input_ids: torch.Tensor, past_len: int | torch.SymInt = 0) -> torch.Tensor:
        T = input_ids.shape[1]
        positions = torch.arange(past_len, past_len + T, device=input_ids.device)  # (T,)
        return self.tok_emb(input_ids) + self.pos_emb(positions)  # (B, T, d_model)


class Encoder(Transformer):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) int64; attention_mask (B, T), 1 = attend, 0 = padding. Returns (B, T, d_model)."""
        assert input_ids.dim() == 2
        x = self.embed(input_ids)
        attn_bias = None
        if attention_mask is not None:
            keep = attention_mask[:, None, None, :].to(x.dtype)  # (B, 1, 1, T)
            # A large finite negative rather than -inf: a fully padded row stays finite, not NaN.
            attn_bias = (1.0 - keep) * torch.finfo(x.dtype).min
        for block in self.blocks:
            x, _ = block(x, attn_bias=attn_bias)
        return self.ln_f(x)


class Decoder(Transformer):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
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
        x = self.embed(input_ids, past_len)
        present = []
        for i, block in enumerate(self.blocks):
            x, layer_present = block(x, past=None if past_key_values is None else past_key_values[i], causal=True)
            present.append(layer_present)
        return self.lm_head(self.ln_f(x)), present


def build_model(config: ModelConfig, seed: int | None = None) -> Transformer:
    """A randomly initialised model for `config` (seeded when `seed` is given), in eval mode."""
    if seed is not None:
        torch.manual_seed(seed)
    model = (Decoder if config.arch == "decoder" else Encoder)(config)
    return model.eval()
