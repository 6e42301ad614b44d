"""What the CLI prints, in one place: `emit` sends a result to stdout as JSON (`--json`: exactly the API's
`to_dict()`) or as a table; progress and errors go to stderr. Names that come from the user or a file are
printed literally (`literal`): no rich markup is interpreted and control characters are escaped."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

out = Console()
err = Console(stderr=True)


def literal(value: Any) -> str:
    """`value` as text safe to print: markup escaped, control characters (ANSI, OSC-8, newlines) made visible."""
    text = str(value)
    text = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )
    return escape(text)


def emit(result: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """The one output sink: `--json` prints `result.to_dict()` as one strict JSON line, else `render(result)`."""
    if as_json:
        print(json.dumps(result.to_dict(), allow_nan=False))
    else:
        render(result)


def comparison_table(result: dict[str, Any]) -> Table:
    """The compare table; `result` is CompareReport.to_dict()."""
    settings = result["settings"]
    steps = (
        f"{settings['new_tokens']} decode steps"
        + (" from a synthetic past (no prefill)" if settings.get("synthetic_past") else "")
        if settings.get("arch", "decoder") == "decoder"
        else "one forward pass"
    )
    table = Table(
        title=f"compare on {settings['provider']}: batch {settings['batch']}, {steps}, target {settings['target']},"
        f" median of {settings['runs']} rounds (ratios: x MHA; * spread > 10%)",
        caption=_crossover_caption(result["rows"], settings["batch"]),
    )
    named = (
        settings.get("preset") is None
    )  # files given: say which is which (built models are named by kind)
    prefilled = any(
        r["prefill_ms"] is not None for r in result["rows"]
    )  # none from a synthetic past
    for column in (["model"] if named else []) + [
        "attention",
        "tokens",
        "params",
        "file MiB",
        "KV cache MiB",
        "KV KiB/token",
        "cache share",
        "peak MiB",
        *(["prefill ms"] if prefilled else []),
        "decode ms/tok",
    ]:
        table.add_column(column, justify="right")

    def cell(row, key, scale=1.0, digits=1, unit=""):
        value, ratio = row[key], row.get(f"{key}_vs_mha")
        if value is None:
            return "n/a"
        text = f"{value / scale:,.{digits}f}{unit}"
        if key.startswith(("prefill", "decode")) and key.split("_")[0] in row.get("unstable", []):
            text += "*"
        return text + (
            f" ({ratio:.2f}x)" if ratio is not None and row["attention"] != "mha" else ""
        )

    for row in result["rows"]:
        table.add_row(
            *([literal(row["model"])] if named else []),
            literal(row["attention"]),
            str(row["seq_len"]),
            cell(row, "parameters", 1e6, 2, "M"),
            cell(row, "model_file_bytes", 2**20),
            cell(row, "kv_cache_bytes", 2**20, 2),
            cell(row, "kv_cache_bytes_per_token", 2**10, 1),
            f"{row['cache_share_of_step']:.0%}",
            cell(row, "peak_memory_bytes", 2**20),
            *([cell(row, "prefill_ms", 1, 2)] if prefilled else []),
            cell(row, "decode_ms_per_token", 1, 2),
        )
    return table


def _crossover_caption(rows: list[dict[str, Any]], batch: int) -> str | None:
    """Per attention kind, the context from which its cache outweighs its weights (cache share: of the bytes
    a decode step reads, every weight and the cache, the cache's part)."""
    kinds = [r["attention"] for r in rows]
    models = [r["model"] for r in rows]
    by = (
        "attention" if len(set(kinds)) == len(set(models)) else "model"
    )  # two files of one kind: names
    at = {r[by]: r["cache_exceeds_weights_at"] for r in rows}
    known = [f"{kind} {tokens:,}" for kind, tokens in at.items() if tokens is not None]
    if not known:
        return None
    return f"KV cache > weights (batch {batch}) from tokens: " + ", ".join(known)


def print_optimize(report) -> None:
    data = report.to_dict()
    table = Table(
        title=f"optimized {literal(report.output)} (target {report.target}, {report.precision})"
    )
    for column in ("", "before", "after"):
        table.add_column(column)
    table.add_row("bytes", f"{report.bytes_before:,}", f"{report.bytes_after:,}")
    table.add_row("nodes", str(data["nodes"]["before"]), str(data["nodes"]["after"]))
    for op in sorted(set(report.op_counts_before) | set(report.op_counts_after)):
        if "Attention" in op:
            table.add_row(
                op, str(report.op_counts_before.get(op, 0)), str(report.op_counts_after.get(op, 0))
            )
    out.print(table)
    quality = report.quality
    lossy = quality is not None
    out.print(
        f"passes: {', '.join(report.passes)}"
        + ("" if lossy else f"; max |optimized - input| {report.max_abs_diff:.2e}"),
        highlight=False,
        markup=False,
    )
    if lossy and quality.judged:
        out.print(
            f"quality on {literal(quality.text)}: {quality.bits_per_byte_before:.4f} ->"
            f" {quality.bits_per_byte_after:.4f}"
            f" bits per byte ({quality.change:+.4f}; threshold {quality.threshold:g})",
            highlight=False,
        )
    elif lossy:
        out.print(f"quality: not judged: {literal(quality.reason)}", highlight=False)


def worst_per_case(records):
    worst: dict[str, Any] = {}
    for record in records:
        if record.case not in worst or record.max_abs_diff > worst[record.case].max_abs_diff:
            worst[record.case] = record
    return list(worst.values())


class steps:
    """A spinner naming the running step, and a tick line per finished step (stderr; silent with --json)."""

    def __init__(self, title: str, quiet: bool):
        self.title, self.quiet = title, quiet
        self.current: tuple[str, float] | None = None
        self.status: Any = None

    def __enter__(self):
        if not self.quiet:
            self.status = err.status(f"{self.title}: starting")
            self.status.__enter__()
        return self.on_step

    def on_step(self, name: str) -> None:
        self._finish()
        self.current = (name, time.perf_counter())
        if self.status:
            self.status.update(f"{self.title}: {name}")

    def _finish(self) -> None:
        if self.current and self.status:
            name, start = self.current
            err.print(
                f"  [green]done[/] {literal(name)} ({time.perf_counter() - start:.1f} s)",
                highlight=False,
            )

    def __exit__(self, exc_type, *rest):
        if exc_type is None:
            self._finish()
        if self.status:
            self.status.__exit__(exc_type, *rest)
        return False


def print_description(description) -> None:
    report = description.to_dict()
    table = Table(title=f"{literal(report['path'])} ({report['kind']})", show_header=False)
    for key, value in report["config"].items():
        table.add_row(key, literal(value))
    for key, value in report["parameters"].items():
        table.add_row(f"parameters.{key}", f"{value:,}")
    for key, value in report.items():
        if key not in ("config", "parameters", "path", "kind") and not isinstance(
            value, (dict, list)
        ):
            table.add_row(key, f"{value:,}" if isinstance(value, int) else literal(value))
    for key, value in report.get("op_counts", {}).items():
        table.add_row(f"ops.{literal(key)}", str(value))
    out.print(table)


def print_mobile_coverage(coverage: dict[str, Any]) -> None:
    for provider, info in coverage.items():
        out.print(
            f"  {provider}: {info['supported_nodes']} of {info['nodes']} nodes ({info['share']:.0%}) in"
            f" {info['partitions']} partition(s); unsupported: {literal(', '.join(info['unsupported_ops']) or 'none')}",
            highlight=False,
        )
