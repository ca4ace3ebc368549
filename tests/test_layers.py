"""The package is layered: a module imports only from its own layer and the layers below it.

From the bottom: the foundations (errors, file names, atomic writes, the notebook display registry, typed
options, task data), ``models`` (loading, architecture specs), ``capture`` (hooks), ``attribution``,
``causal``, ``diff``, ``training``, ``sweep``, ``report`` (renders the results of all of them, never runs a
model), ``cli`` and ``live`` (the Jupyter widget that recomputes and renders), and the top-level package
(the public facade). Every import counts, also one inside a
function or under ``TYPE_CHECKING``: a lazy import is still a dependency, and a cycle between layers makes
every change spread.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tokenlens

LAYERS = (
    ("errors", "files", "io", "display", "version", "options", "progress", "threads", "tasks"),
    ("models",),
    ("capture",),
    ("attribution",),
    ("causal",),
    ("diff",),
    ("training",),
    ("sweep",),
    ("report",),
    ("cli", "live"),
    ("__init__",),
)
ROOT = Path(tokenlens.__file__).parent
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _part(module: str) -> str:
    """The layer name of a ``tokenlens…`` name: its first component below ``tokenlens`` when that is a module
    or subpackage, else ``__init__`` (``tokenlens`` itself, or an attribute of it such as ``__version__``)."""
    parts = module.split(".")
    if len(parts) > 1 and ((ROOT / parts[1]).is_dir() or (ROOT / f"{parts[1]}.py").is_file()):
        return parts[1]
    return "__init__"


def _imports(path: Path) -> set[str]:
    """Every ``tokenlens`` module ``path`` imports, anywhere in the file, relative imports resolved."""
    module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            name = ".".join(p for p in (base, node.module or "") if p)
            found |= {f"{name}.{alias.name}" for alias in node.names}  # the names, not the package
    return {name for name in found if name == "tokenlens" or name.startswith("tokenlens.")}


def test_every_module_belongs_to_a_layer():
    parts = {_part(".".join(p.relative_to(ROOT.parent).with_suffix("").parts)) for p in ROOT.rglob("*.py")}
    assert parts <= set(RANK), f"modules outside every layer: {sorted(parts - set(RANK))}"


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        source = _part(".".join(path.relative_to(ROOT.parent).with_suffix("").parts))
        for target in sorted(_imports(path)):
            part = _part(target)
            if part in RANK and RANK[part] > RANK[source]:
                upward.append(f"{path.relative_to(ROOT.parent)} imports {target} ({source} < {part})")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)
