"""The method registry as the tests read it: names filtered by capability, so that a test meaning "every method
that can do X" tests a newly registered method by its being registered (``neuralode.METHODS``, filtered by
:class:`~neuralode.solvers.methods.base.Capabilities`)."""

from __future__ import annotations

from collections.abc import Callable

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


# Methods whose outputs inside a step hang on the exact step grid far more than on rounding, so that the two clocks'
# outputs there agree to a fraction of the interpolant's own error rather than to rounding (the step ends do agree to
# rounding). The per-sample clock's arithmetic is the host clock's grouped differently (``y0 + dt * sum_j a_ij k_j``
# against ``sum_j (a_ij dt) k_j``, the controller's exp/log against its powers), so the clocks' step sizes differ
# by an ulp; how far that goes depends on the method.
GRID_SENSITIVE: dict[str, str] = {
    "dopri8_13m": (
        "its 8(7) error estimate dt * sum_i (b_i - b^_i) k_i is ~1e-11 at rtol 1e-6, a cancellation of terms "
        "5e10 times larger, so an ulp anywhere in a step moves the error ratio by ~1e-6 and the next step by "
        "~1e-7 relative (dopri8's estimates: 1e-8 and 1e-9); its order-4 interpolant errs by ~1e-4 (100 rtol) "
        "at its order-8 steps, and moving the step ends by 1e-7 moves the outputs between them by ~1e-9. "
        "The host clock alone does the same when its first step changes by 1e-12 relative "
        "(test_per_sample.py::test_dopri8_13m_outputs_inside_a_step_follow_its_step_grid)"
    ),
}


def per_sample_methods_matching_the_joint_loop() -> list[str]:
    """The per-sample methods, for tests comparing the per-sample clock's outputs with the joint loop's; compare
    them within :func:`clock_tolerance`."""
    return methods("per_sample")


def clock_tolerance(method: str, scale: float, interpolation_error: Callable[[], float]) -> float:
    """How far a per-sample solve's outputs may lie from the joint loop's on the same problem: ``1e-12`` of the
    solution's size ``scale`` (rounding), plus, for a method in :data:`GRID_SENSITIVE`, ``1e-3`` of the
    interpolant's own error, ``interpolation_error()`` (the joint loop's largest error at the outputs compared,
    against a reference far tighter; called only for those methods). Measured on the tests' Van der Pol problems:
    dopri8_13m's clocks differ by at most 4e-5 of that error."""
    tol = 1e-12 * scale
    if method in GRID_SENSITIVE:
        tol += 1e-3 * interpolation_error()
    return tol
