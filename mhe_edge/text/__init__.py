"""Text: the tokenizer a model folder carries, the training corpus and its held-out split, token pickers
(greedy and sampled) shared by the PyTorch and ONNX generators, and scoring in bits per byte."""
