"""mkdocs hooks: every public name has its entry in the API reference, docstrings' cross-reference roles
read as code, and every snippet include is expanded.

The reference pages name objects by their public paths (``::: neuralode.odeint``), and mkdocstrings
fails the strict build when such a path stops resolving. :func:`on_pre_build` closes the other gap: a name
newly exported (added to ``neuralode.__all__`` or a subpackage's ``__all__``) but documented nowhere is a
warning, so ``mkdocs build --strict`` fails until the reference lists it.

The docstrings cross-reference with Sphinx's roles (``:func:`~neuralode.solvers.api.solve```), which the
Google-style parser leaves as text; :func:`on_page_content` shows each as the code it names (the last
component after ``~``, as Sphinx does). It also fails the strict build on a page that still shows a
pymdownx snippet marker (``--8<--``): the tutorials include their example scripts that way, and a marker
altered by a formatter (``--8 < --``) is not an include, so the page would show the line instead of the
script.
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


ROLE = re.compile(r":(?:func|class|mod|attr|meth|data|exc|obj):<code>(~?)([^<]+)</code>")
SNIPPET_MARKER = re.compile(r"--8\s*(?:&lt;|<)\s*--")
TAG = re.compile(r"<[^>]+>")


def _role(match: re.Match) -> str:
    target = match.group(2)
    return f"<code>{target.rsplit('.', 1)[-1] if match.group(1) else target}</code>"


def on_page_content(html: str, page, config, files) -> str:
    if SNIPPET_MARKER.search(TAG.sub("", html)):  # the text as shown: highlighting splits it into spans
        log.warning(
            "%s shows a snippet marker that was not expanded: write it as '--8<-- \"path\"' on a line of "
            "its own (a formatter may have spaced it out)",
            page.file.src_path,
        )
    return ROLE.sub(_role, html)
