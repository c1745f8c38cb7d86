"""The backsolve adjoint's backward dynamics in a form ``torch.compile`` captures, so that under
``options={"compile": ...}`` the backward solve is compiled as the forward one is.

The backward state is ``(y, a, *gθ)`` and its dynamics ``(f, -aᵀ∂f/∂y, -aᵀ∂f/∂θ)``
(:mod:`~neuralode.solvers.adjoint.backsolve`). The eager dynamics form the vector-Jacobian products with
``torch.autograd.grad`` on a graph recorded inside each evaluation, which dynamo cannot trace: a compiled
backward would break its graph at every evaluation. Written with ``torch.func.vjp`` over
``torch.func.functional_call`` (the parameters differentiated passed in explicitly, by name), the same
products are one traceable function: the device run (:mod:`~neuralode.solvers.fast.device_run`) then takes a
whole interval's backward solve as one compiled ``while_loop`` (an adaptive ``dopri5``/``tsit5``/``bosh3``
backward method), and any other method its compiled step. Function transforms ignore the ``torch.no_grad()``
around them (a backward pass without ``create_graph`` runs under it), so the products are formed there too.

Only where the tensors differentiated are parameters of ``func`` (a ``torch.nn.Module``, with the default
``adjoint_params`` or a subset of its parameters): a tensor that is not one cannot be passed in by name, and the
backward keeps the eager dynamics. One callable is kept per module, parameter names and state layout, so that
the compiled graphs, cached per callable, are reused by every backward pass of a training loop.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

_CACHE: weakref.WeakKeyDictionary[object, dict] = weakref.WeakKeyDictionary()


def traced_dynamics(func, params: tuple[torch.Tensor, ...], flat) -> Callable | None:
    """The backward dynamics ``(t, (y, a, *gθ)) -> (f, -aᵀ∂f/∂y, *(-aᵀ∂f/∂θ))`` through ``torch.func.vjp``, for
    the parameters ``params`` of the module ``func`` and its state layout ``flat``
    (:class:`~neuralode.solvers.adjoint.common.Flat`); ``None`` where they cannot be written so (``func`` is
    not a module, or a tensor differentiated is not one of its parameters)."""
    if not isinstance(func, torch.nn.Module):
        return None
    by_id = {id(p): name for name, p in func.named_parameters()}
    if not all(id(p) in by_id for p in params):
        return None
    names = tuple(by_id[id(p)] for p in params)
    key = (names, flat.is_tuple, tuple(tuple(s) for s in flat.shapes))
    try:
        per_func = _CACHE.setdefault(func, {})
    except TypeError:  # not weak-referenceable: a callable for this pass only
        per_func = {}
    dynamics = per_func.get(key)
    if dynamics is None:
        dynamics = per_func[key] = _make(func, names, flat)
    return dynamics


def _make(module: torch.nn.Module, names: tuple[str, ...], flat) -> Callable:
    def dynamics(tt: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        y, a = state[0], state[1]
        named = dict(module.named_parameters())
        ps = tuple(named[name] for name in names)

        def f(y_: torch.Tensor, *p: torch.Tensor) -> torch.Tensor:
            return flat.flatten(torch.func.functional_call(module, dict(zip(names, p)), (tt, flat.unflatten(y_))))

        fy, pull = torch.func.vjp(f, y, *ps)[:2]  # (no auxiliary output: has_aux is off)
        vjps = pull(-a)
        # The quadratures are carried in the state's dtype, as the eager dynamics carry them.
        return (fy, vjps[0], *(g.to(a.dtype) for g in vjps[1:]))

    # A module that counts its calls and lets the solver count them (counting.counted_by_solver): one evaluation of
    # the dynamics is one call of the module, as in the eager backward dynamics.
    for name in ("suspend_counting", "count_calls"):
        if callable(getattr(module, name, None)):
            setattr(dynamics, name, getattr(module, name))
    return dynamics
