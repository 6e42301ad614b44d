"""What onnxscript's rewriter keeps after it has run, and letting go of it."""

from __future__ import annotations

import gc
import sys

# Above this many bytes of weights, a full garbage collection (a fraction of a second with PyTorch
# loaded) frees a graph and its weights before ONNX Runtime loads a file; below, it is not worth it
COLLECT_ABOVE_BYTES = 64 << 20


def let_go_of_graph(weight_bytes: int) -> None:
    """After the last reference to a model's graph is dropped: the rewriter's matchers let go of it, and
    for a large model a collection frees it (its nodes and values hold each other in cycles)."""
    release_rewriter_state()
    if weight_bytes > COLLECT_ABOVE_BYTES:
        gc.collect()


MATCHER_STATE = ("_graph", "_current_node", "_match", "_tracer")


def release_rewriter_state() -> None:
    """onnxscript's rewrite rules are module-level objects, and each rule's matcher keeps the last graph it
    matched (and through the graph every initializer: the PyTorch parameters of an export, the weights a
    pass made). Drop those references, so the graph and its weights can be freed once the caller lets go.
    Only module-level rules can hold on past the export (rules made inside a call die with it), so the
    loaded onnxscript modules' globals are searched, not every object in the process."""
    from onnxscript.rewriter import _matcher, _rewrite_rule

    def rules(value):
        if isinstance(value, _rewrite_rule.RewriteRule):
            yield value
        elif isinstance(value, _rewrite_rule.RewriteRuleSet):
            yield from value.rules
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, (_rewrite_rule.RewriteRule, _rewrite_rule.RewriteRuleSet)):
                    yield from rules(item)

    for name, module in list(sys.modules.items()):
        if not name.startswith("onnxscript") or module is None:
            continue
        for value in list(vars(module).values()):
            for rule in rules(value):
                matcher = getattr(rule, "_matcher", None)
                if isinstance(matcher, _matcher.SimplePatternMatcher):
                    for attr in MATCHER_STATE:
                        matcher.__dict__.pop(attr, None)
