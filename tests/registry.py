"""The method registry as the tests read it: names filtered by capability, so that a test meaning "every method
that can do X" tests a newly registered method by its being registered (``neuralode.METHODS``, filtered by
:class:`~neuralode.solvers.methods.base.Capabilities`)."""

from __future__ import annotations

from neuralode import METHODS


def methods(*wanted: str, unwanted: tuple[str, ...] = ()) -> list[str]:
    """The registry's names whose capabilities include every flag of ``wanted`` and none of ``unwanted``."""
    return [
        n
        for n, m in METHODS.items()
        if all(getattr(m.capabilities, w) for w in wanted) and not any(getattr(m.capabilities, u) for u in unwanted)
    ]


def interpolant(name: str, **options) -> type:
    """The class that fills method ``name``'s solution inside a step with these ``options`` (a
    :class:`~neuralode.solvers.methods.interpolants.StepInterpolant`: ``ContinuousExtension``, ``Hermite``, ...)."""
    m = METHODS[name]
    return m.interpolant(m.options_type.from_keys(options))


def order(name: str) -> int:
    return METHODS[name].order
