"""mkdocs hook: every public name has its entry in the API reference.

The reference pages name objects by their public paths (``::: neuralode.odeint``), and mkdocstrings
fails the strict build when such a path stops resolving. This hook closes the other gap: a name newly
exported (added to ``neuralode.__all__`` or a subpackage's ``__all__``) but documented nowhere is a
warning, so ``mkdocs build --strict`` fails until the reference lists it.
"""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.neuralode")

#: The modules whose public names the reference must cover.
PUBLIC_MODULES = (
    "neuralode",
    "neuralode.solvers",
    "neuralode.models",
    "neuralode.datasets.toy2d",
    "neuralode.datasets.spirals",
    "neuralode.datasets.mnist",
    "neuralode.datasets.demo_spiral",
    "neuralode.training.mnist",
    "neuralode.training.cnf",
    "neuralode.training.latent",
)
#: Modules without ``__all__``: their public names, listed here.
EXPLICIT: dict[str, tuple[str, ...]] = {}


def _resolve(path: str) -> object:
    """The object a dotted path names (a module, or an attribute of the longest importable prefix)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def on_pre_build(config) -> None:
    reference = Path(config["docs_dir"]) / "reference"
    documented: dict[int, str] = {}
    whole_modules: set[str] = set()
    for page in sorted(reference.glob("*.md")):
        for path in re.findall(r"^::: ([\w.]+)", page.read_text(), re.M):
            try:
                obj = _resolve(path)
            except (ImportError, AttributeError):
                continue  # mkdocstrings reports it, naming the page
            documented[id(obj)] = path
            if isinstance(obj, type(importlib)):
                whole_modules.add(path)
    missing = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        names = EXPLICIT.get(module_name) or getattr(module, "__all__", ())
        for name in names:
            obj = getattr(module, name)
            if module_name in whole_modules or id(obj) in documented:
                continue
            missing.append(f"{module_name}.{name}")
    if missing:
        log.warning("public names missing from docs/reference/*.md (add a '::: NAME' entry): %s", ", ".join(missing))
