"""PyTorch reference modules for every attention kind, in encoder and decoder transformers, and their
safe checkpoints."""

from mhe_edge.models.attention import SelfAttention, reference_attention, use_attention_core
from mhe_edge.models.checkpoint import load_model, read_checkpoint, save_checkpoint
from mhe_edge.models.transformer import Decoder, Encoder, Transformer, build_model

__all__ = [
    "Decoder",
    "Encoder",
    "SelfAttention",
    "Transformer",
    "build_model",
    "load_model",
    "read_checkpoint",
    "reference_attention",
    "save_checkpoint",
    "use_attention_core",
]
