"""PyTorch reference modules for every attention kind, in encoder and decoder transformers."""
from mhe_edge.models.attention import SelfAttention, reference_attention, use_attention_core
from mhe_edge.models.transformer import Decoder, Encoder, Transformer, build_model

__all__ = ["Decoder", "Encoder", "SelfAttention", "Transformer", "build_model", "reference_attention", "use_attention_core"]
