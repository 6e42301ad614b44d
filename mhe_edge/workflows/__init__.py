"""Workflows that chain the parts: build a model, export then optimize, compare kinds side by side, package
for an app runtime. They sit above models, exporters, passes, runtime and edge; the CLI sits above them."""
