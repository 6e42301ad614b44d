"""The package's parts import in one direction only (docs/architecture.md): no cycle, and the runtime, the
passes and the models never reach upwards. Read from the source with `ast`, so it cannot drift."""

import ast
from pathlib import Path

import pytest

import mhe_edge

PACKAGE = Path(mhe_edge.__file__).parent
# Each part may import only the parts named here (and itself). Imports under TYPE_CHECKING do not count.
BASE = {"errors", "config", "contract", "accounting", "results", "progress", "options"}
ALLOWED = {
    "errors": set(),
    "progress": set(),
    "results": set(),
    "config": {"errors"},
    "contract": {"config"},
    "options": {"errors", "config", "contract"},
    "accounting": {"errors", "config"},
    "files": BASE,
    "sessions": {"errors"},
    "verification": BASE,
    "text": BASE | {"files", "sessions"},
    "models": BASE | {"files", "text"},
    "training": BASE | {"files", "models", "text"},
    "exporters": BASE | {"files", "models", "sessions", "verification", "text"},
    "passes": BASE | {"files", "sessions", "verification", "text"},
    "runtime": BASE | {"files", "sessions", "text"},
    "edge": BASE | {"files", "sessions", "verification", "passes", "runtime"},
    "inspection": BASE | {"files", "models", "edge"},
    "workflows": BASE
    | {
        "files",
        "sessions",
        "verification",
        "models",
        "exporters",
        "passes",
        "runtime",
        "edge",
        "inspection",
        "text",
        "training",
    },
    "cli": BASE
    | {
        "files",
        "workflows",
        "edge",
        "runtime",
        "passes",
        "exporters",
        "inspection",
        "models",
        "text",
        "training",
    },
}


def _parts():
    return {
        p.stem
        for p in PACKAGE.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and p.stem not in ("__init__", "__main__"))
    }


def _imports():
    """{part: {imported part: 'file:line'}} over the whole package."""
    parts, edges = _parts(), {}
    for file in PACKAGE.rglob("*.py"):
        relative = file.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        bits = module.split(".")
        if len(bits) < 2 or bits[1] not in parts:
            continue
        tree = ast.parse(file.read_text())
        skipped = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in skipped or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            )
            for name in names:
                target = name.split(".")
                if (
                    len(target) > 1
                    and target[0] == "mhe_edge"
                    and target[1] in parts
                    and target[1] != bits[1]
                ):
                    edges.setdefault(bits[1], {}).setdefault(
                        target[1], f"{file.name}:{node.lineno}"
                    )
    return edges


def test_every_part_is_known():
    assert _parts() == set(ALLOWED), (
        "a new part needs its place in docs/architecture.md and ALLOWED"
    )


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_imports_follow_the_direction(part):
    against = {
        other: where
        for other, where in _imports().get(part, {}).items()
        if other not in ALLOWED[part]
    }
    assert not against, f"{part} imports against the direction: {against}"


def test_runtime_needs_only_onnx_files():
    assert not {"models", "exporters", "passes"} & set(_imports().get("runtime", {}))


def test_no_part_runs_the_cli_in_a_subprocess():
    offenders = [
        str(f)
        for f in PACKAGE.rglob("*.py")
        if '-m", "mhe_edge' in f.read_text() or "'-m', 'mhe_edge'" in f.read_text()
    ]
    assert not offenders
