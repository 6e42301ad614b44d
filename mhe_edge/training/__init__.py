"""Training decoders on text: the loop (AdamW, warmup + cosine, clipping, the fused attention core), resumable
checkpoints, and the `train` workflow that turns a corpus into a model folder with its tokenizer."""
