"""Options of the implicit (stiff) methods: the adaptive options plus how the Jacobian is formed.

:class:`ImplicitSettings` and :class:`RadauSettings` are the ``Options.method`` records of these methods
(see :mod:`neuralode.solvers.options` for the records by concern); :class:`ImplicitOptions`,
:class:`RadauOptions` and :class:`AutoOptions` are the parsed options the methods carry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..options import AdaptiveOptions, MethodSettings

JACOBIAN_KINDS = ("batched", "dense")


@dataclass(frozen=True)
class ImplicitSettings(MethodSettings):
    """How the implicit methods form the Jacobian ``J = df/dy`` (``Options.method`` of ``rodas5p``,
    ``rosenbrock23``, ``kvaerno5`` and the fixed-step implicit methods). neuralode options.

    Attributes:
        jacobian: how ``J`` is formed.

            * ``"batched"`` (default): by autograd, one ``n x n`` block per sample, the leading
              ``batch_dims`` dimensions of the state indexing independent systems. The first Jacobian of
              every solve checks that the samples really are independent (one extra cotangent in the same
              backward) and raises ``ValueError`` if func couples them.
            * ``"dense"``: by autograd, the whole state is one coupled system (``batch_dims = 0``).
            * a callable ``jac(t, y)``: the analytic Jacobian, a tensor of shape ``(B, n, n)`` (``(n, n)``
              for one system), ``J[b, i, j] = d f_bi / d y_bj`` over the flattened event dimensions.
        batch_dims: how many leading dimensions of the state index independent systems. Default (``None``):
            1 for a tensor state with two or more dimensions (the ``(batch, features)`` convention of Neural
            ODEs), 0 for a 1-D state or a tuple state. A state whose rows are coupled (one system laid out
            as a matrix, a model with batch normalisation) needs ``jacobian="dense"`` or ``batch_dims=0``.
    """

    jacobian: str | Callable[..., Any] = "batched"
    batch_dims: int | None = None

    def __post_init__(self) -> None:
        jac = self.jacobian
        if not callable(jac) and not (isinstance(jac, str) and jac in JACOBIAN_KINDS):
            raise ValueError(f"options['jacobian'] must be 'batched', 'dense' or a callable jac(t, y); got {jac!r}.")
        k = self.batch_dims
        if k is not None and not (isinstance(k, int) and not isinstance(k, bool) and k >= 0):
            raise ValueError(f"options['batch_dims'] must be a non-negative integer or None; got {k!r}.")
        if isinstance(jac, str) and jac == "dense" and k not in (None, 0):
            raise ValueError(
                f"options['jacobian']='dense' treats the whole state as one system, so options['batch_dims'] "
                f"must be 0 or left out; got {k!r}."
            )


@dataclass(frozen=True)
class RadauSettings(ImplicitSettings):
    """``Options.method`` of ``radau5``, ``radau9`` and ``radau13``: :class:`ImplicitSettings` plus

    Attributes:
        dense_error: whether the step's error estimate also bounds the error of the collocation polynomial
            the outputs between step ends are read from (``radau.py``, "Error of the continuous output").
            Default (``None``): on for ``radau9`` and ``radau13``, whose step ends are far more accurate than
            their collocation polynomials between them; off for ``radau5`` (as RADAU5 and scipy's ``Radau``).
    """

    dense_error: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dense_error is not None and not isinstance(self.dense_error, bool):
            raise ValueError(f"options['dense_error'] must be True, False or None; got {self.dense_error!r}.")


@dataclass(frozen=True)
class ImplicitOptions(AdaptiveOptions):
    """Parsed options of ``rodas5p``, ``rosenbrock23``, ``kvaerno5`` and ``radau5/9/13`` (the adaptive stiff
    methods): :class:`~neuralode.solvers.options.AdaptiveOptions` with :class:`ImplicitSettings`
    (``jacobian``, ``batch_dims``).

    The controller (``StepControl.controller``) defaults to ``"pi_gustafsson"``: PI control with
    Gustafsson's predictive cap (see ``controller.py``), which on the stiff benchmark problems keeps PI's
    errors and cuts the rejected steps at the fast transients (Van der Pol mu = 1000, OREGO, HIRES;
    ``benchmarks/results/stiff.md``).
    """

    method: ImplicitSettings = field(default_factory=ImplicitSettings)

    KEYS = AdaptiveOptions.KEYS + ("jacobian", "batch_dims")
    default_controller = "pi_gustafsson"


@dataclass(frozen=True)
class RadauOptions(ImplicitOptions):
    """Parsed options of ``radau5``, ``radau9`` and ``radau13``: :class:`ImplicitOptions` with
    :class:`RadauSettings` (adding ``dense_error``)."""

    method: RadauSettings = field(default_factory=RadauSettings)

    KEYS = ImplicitOptions.KEYS + ("dense_error",)


@dataclass(frozen=True)
class AutoOptions(ImplicitOptions):
    """Parsed options of ``method="auto"``: :class:`ImplicitOptions` with the explicit methods' default
    controller, ``"pi"``, so that on a problem that never turns stiff ``auto`` is tsit5 step for step."""

    default_controller = "pi"
