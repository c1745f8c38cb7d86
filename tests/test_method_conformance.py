"""Every method of ``neuralode.METHODS`` against what its capabilities declare.

Parametrised over the one registry and filtered by :class:`~neuralode.solvers.methods.base.Capabilities`, so a
method registered there is tested here with no new test: accuracy against closed forms (float64), float32
against float64, tuple states, backwards time, dense output (the method's own or Hermite), events (a terminal
event and a bouncing ball with resets), per-sample clocks against each sample solved alone, gradients by
backpropagation and by ``odeint_adjoint`` against finite differences, float32 solves and gradients on the CPU (and
on CUDA where there is one) against float64 ones on the CPU (``tests/device_agreement.py``, shared with
``benchmarks/gpu_check.py``), and every capability a method declares
``False`` refused with an error naming it. Problems are small and tolerances loose where the check allows.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from neuralode import METHODS, Event, odeint, odeint_adjoint, solve
from neuralode.solvers.methods import Capabilities
from neuralode.solvers.methods.interpolants import Hermite, Linear
from tests import device_agreement as agreement
from tests.registry import methods

F64, F32 = torch.float64, torch.float32
H = 1 / 32  # the step of fixed-grid methods
RTOL, ATOL = 1e-8, 1e-10  # adaptive methods
# Options a method needs to be accurate here: explicit_adams at its default max_order reaches order 10, where
# Adams-Bashforth is unstable for small steps (as torchdiffeq 0.2.5's is).
EXTRA = {"explicit_adams": {"max_order": 5}}

NAMES = list(METHODS)


def setting(name: str, h: float = H) -> tuple[dict, float]:
    """``(keyword arguments of solve, error tolerance)``: adaptive methods at ``RTOL``/``ATOL``, fixed-grid ones at
    step ``h`` within a loose multiple of ``h**order``."""
    m = METHODS[name]
    if m.capabilities.adaptive:
        if m.order is not None and m.order < 4:  # a low-order pair at RTOL would take thousands of steps
            return {"rtol": 100 * RTOL, "atol": 100 * ATOL}, 1e-4
        return {"rtol": RTOL, "atol": ATOL}, 1e-5
    return {"options": {"step_size": h, **EXTRA.get(name, {})}}, min(20 * h**m.order, 0.05)


def with_options(kw: dict, **more) -> dict:
    return {**kw, "options": {**kw.get("options", {}), **more}}


def oscillator(t, y):
    """``y = (x, v)``, ``x'' = -x``: ``x = cos t``, ``v = -sin t`` from ``(1, 0)``."""
    return torch.stack([y[1], -y[0]])


def exact(t: float, dtype=F64) -> torch.Tensor:
    return torch.tensor([math.cos(t), -math.sin(t)], dtype=dtype)


@pytest.mark.parametrize("name", NAMES)
def test_accuracy_against_the_closed_form(name):
    kw, tol = setting(name)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    ys = solve(oscillator, exact(0.0), t, method=name, **kw).ys
    err = max((ys[i] - exact(float(ti))).abs().max().item() for i, ti in enumerate(t))
    assert err < tol, f"{name}: error {err:.3g}, tolerance {tol:.3g}"
    assert ys.dtype == F64


@pytest.mark.parametrize("name", methods(unwanted=("own_driver",)))
def test_float32_agrees_with_float64(name):
    kw, tol = setting(name)
    if METHODS[name].capabilities.adaptive:
        kw = {"rtol": 1e-5, "atol": 1e-7}
    t = torch.tensor([0.0, 1.0])
    t_dtypes = set()

    def f(t, y):
        t_dtypes.add(t.dtype)
        return oscillator(t, y)

    y32 = solve(f, exact(0.0, F32), t, method=name, **kw).ys[-1]
    y64 = solve(oscillator, exact(0.0), t.to(F64), method=name, **kw).ys[-1]
    assert y32.dtype == F32
    assert t_dtypes == {F32}  # func sees time in the state's dtype
    assert (y32.to(F64) - y64).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_tuple_state(name):
    """``(x, v)`` as a tuple of tensors: the same solution as the stacked state, in the tuple's layout."""
    kw, tol = setting(name)

    def f(t, y):
        x, v = y
        return v, -x

    t = torch.tensor([0.0, 1.0], dtype=F64)
    x, v = solve(f, (torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64)), t, method=name, **kw).ys
    assert x.shape == v.shape == (2, 1)
    err = (torch.cat([x[-1], v[-1]]) - exact(1.0)).abs().max().item()
    assert err < tol, f"{name}: error {err:.3g}"


@pytest.mark.parametrize("name", NAMES)
def test_backwards_in_time(name):
    kw, tol = setting(name)
    t = torch.tensor([1.0, 0.25, 0.0], dtype=F64)
    ys = solve(oscillator, exact(1.0), t, method=name, **kw).ys
    err = max((ys[i] - exact(float(ti))).abs().max().item() for i, ti in enumerate(t))
    assert err < tol, f"{name}: error {err:.3g}"


@pytest.mark.parametrize("name", methods(unwanted=("own_driver",)))
def test_dense_output(name):
    """``Solution.evaluate`` between steps: the method's own continuous extension where it declares one
    (``own_dense``), cubic Hermite otherwise."""
    kw, tol = setting(name)
    m = METHODS[name]
    if not m.capabilities.adaptive:
        kw = with_options(kw, interp="cubic")  # a fixed grid's outputs are linear in the step by default
    sol = solve(
        oscillator, exact(0.0), torch.tensor([0.0, 1.0], dtype=F64), method=name, **with_options(kw, dense=True)
    )
    ts = [0.1, 0.37, 0.5, 0.83]
    got = sol.evaluate(torch.tensor(ts, dtype=F64))
    err = max((got[i] - exact(ti)).abs().max().item() for i, ti in enumerate(ts))
    assert err < tol + 1e-6, f"{name}: error {err:.3g}"
    interpolant = m.interpolant(m.options_type.from_keys(kw.get("options", {})))
    assert (not issubclass(interpolant, (Hermite, Linear))) == m.capabilities.own_dense


@pytest.mark.parametrize("name", methods("events"))
def test_terminal_event(name):
    """``y' = -y`` from 1 stops where ``y = 1/2``: at ``ln 2``."""
    kw, tol = setting(name)
    sol = solve(
        lambda t, y: -y,
        torch.ones(1, dtype=F64),
        torch.tensor([0.0, 2.0], dtype=F64),
        method=name,
        events=Event(lambda t, y: y[0] - 0.5),
        **kw,
    )
    (record,) = sol.events
    assert abs(record.t.item() - math.log(2.0)) < 4 * tol
    assert abs(record.y.item() - 0.5) < 4 * tol


@pytest.mark.parametrize("name", methods("events"))
def test_bouncing_ball(name):
    """``x'' = -2`` from ``x = 1/2`` at rest, bouncing at ``x = 0`` with restitution 1/2: impacts at ``1/sqrt 2`` and
    ``sqrt 2``; after the second the ball rises at ``sqrt(2) / 4``."""
    kw, tol = setting(name)

    def fall(t, y):
        return torch.stack([y[1], torch.full_like(y[1], -2.0)])

    def bounce(t, y):
        return torch.stack([torch.zeros_like(y[0]), -0.5 * y[1]])

    t_end = 1.6
    sol = solve(
        fall,
        torch.tensor([0.5, 0.0], dtype=F64),
        torch.tensor([0.0, t_end], dtype=F64),
        method=name,
        events=Event(lambda t, y: y[0], direction=-1, terminal=False, reset=bounce),
        **kw,
    )
    times = [e.t.item() for e in sol.events]
    assert len(times) == 2 and abs(times[0] - 2**-0.5) < 4 * tol and abs(times[1] - 2**0.5) < 4 * tol, times
    tau, v = t_end - 2**0.5, 2**0.5 / 4
    want = torch.tensor([v * tau - tau * tau, v - 2 * tau], dtype=F64)
    # 20 tol: the Adams methods carry their history, formed on the grid's spacing, across the short step
    # that ends at an impact, and their error constants are large (1.5e-4 and 2.2e-4 here at h = 1/32).
    assert (sol.ys[-1] - want).abs().max().item() < 20 * tol


@pytest.mark.parametrize("name", methods("per_sample"))
def test_per_sample_matches_each_sample_alone(name):
    """A batch with a clock per sample: each sample's solution is the one it has solved alone."""
    rates = torch.tensor([[0.5], [1.0], [3.0]], dtype=F64)

    def f(t, y):
        return -rates[: y.shape[0]] * y if y.shape[0] == 3 else -rate * y

    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    y0 = torch.ones(3, 1, dtype=F64)
    kw, tol = setting(name)
    batch = solve(f, y0, t, method=name, **with_options(kw, per_sample=True)).ys
    for i in range(3):
        rate = rates[i]
        alone = solve(f, y0[i : i + 1], t, method=name, **kw).ys
        # The same steps; the per-sample clock forms its step sizes with tensors, and dopri8_13m's per-sample
        # interpolant differs from the joint loop's at interior outputs (1e-8 here), so not bit for bit.
        torch.testing.assert_close(batch[:, i], alone[:, 0], rtol=1e-7, atol=1e-12)
        torch.testing.assert_close(batch[:, i, 0], torch.exp(-rate * t), rtol=0, atol=tol)


class Decay(torch.nn.Module):
    """``y' = -k y + c``: ``y(1) = c/k + (y0 - c/k) e^{-k}``."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(1.3, dtype=F64))
        self.c = torch.nn.Parameter(torch.tensor(0.4, dtype=F64))

    def forward(self, t, y):
        return -self.k * y + self.c


@pytest.mark.parametrize("name", methods("adjoint", unwanted=("own_driver",)))
def test_backprop_and_adjoint_against_finite_differences(name):
    """d y(1) / d (y0, k, c) in float64: backpropagation through the solver is the derivative of the discrete
    solution (finite differences of the same solve), the adjoint that of the ODE (the closed form) to the
    method's accuracy."""
    kw, tol = setting(name, h=1 / 16)
    t = torch.tensor([0.0, 1.0], dtype=F64)

    def grads(integrate):
        model = Decay()
        y0 = torch.full((1,), 0.8, dtype=F64, requires_grad=True)
        y1 = integrate(model, y0, t, method=name, **kw)[-1].sum()
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(y1, (y0, model.k, model.c))])

    def value(y0, k, c):
        model = Decay()
        with torch.no_grad():
            model.k.fill_(k)
            model.c.fill_(c)
            return odeint(model, torch.full((1,), y0, dtype=F64), t, method=name, **kw)[-1].item()

    p, eps = [0.8, 1.3, 0.4], 1e-6
    fd = []
    for i in range(3):
        up, down = list(p), list(p)
        up[i] += eps
        down[i] -= eps
        fd.append((value(*up) - value(*down)) / (2 * eps))
    fd = torch.tensor(fd, dtype=F64)
    backprop, adjoint = grads(odeint), grads(odeint_adjoint)
    y0, k, c = p
    e = math.exp(-k)
    closed = torch.tensor(
        [e, -c / k**2 + c / k**2 * e - (y0 - c / k) * e, (1 - e) / k],
        dtype=F64,
    )
    # Finite differences of an adaptive solve also see its step sizes move with the parameters, which
    # backpropagation holds fixed: they agree to a multiple of the tolerance.
    scale = (1e-3 if kw["rtol"] > RTOL else 1e-4) if METHODS[name].capabilities.adaptive else 1e-6
    torch.testing.assert_close(backprop, fd, rtol=scale, atol=scale)
    torch.testing.assert_close(adjoint, closed, rtol=0, atol=max(10 * tol, 1e-5))


# --- every capability a method declares False is refused, naming what was asked for.

T = torch.tensor([0.0, 1.0], dtype=F64)
Y0 = torch.ones(2, dtype=F64)


def _solve(name, **kw):
    return solve(lambda t, y: -y, Y0, T, method=name, **kw)


def _refuse_adaptive(name):
    with pytest.raises(ValueError, match="first_step"):
        _solve(name, options={"first_step": 0.1})


def _refuse_events(name):
    with pytest.raises(ValueError, match="does not handle events"):
        _solve(name, events=Event(lambda t, y: y[0] - 0.5))


def _refuse_per_sample(name):
    with pytest.raises(ValueError, match="per_sample"):
        _solve(name, options={"per_sample": True})


def _refuse_compile(name):
    with pytest.raises(ValueError, match="compile"):
        _solve(name, options={"compile": True, **({} if METHODS[name].capabilities.adaptive else {"step_size": 0.1})})


def _refuse_checkpoint(name):
    with pytest.raises(ValueError, match="checkpoint"):
        _solve(name, options={"checkpoint": True})


def _refuse_torch_func(name):
    with pytest.raises(TypeError, match="torch.func"):
        kw = {} if METHODS[name].capabilities.adaptive else {"options": {"step_size": 0.1}}
        torch.func.jvp(lambda y: solve(lambda t, x: -x, y, T, method=name, **kw).ys, (Y0,), (torch.ones_like(Y0),))


def _refuse_half(name):
    with pytest.raises(TypeError, match="float16"):
        kw = {"rtol": 1e-2, "atol": 1e-3} if METHODS[name].capabilities.adaptive else {"options": {"step_size": 0.1}}
        solve(lambda t, y: -y, Y0.half(), T.half(), method=name, **kw)


REFUSALS = {
    "adaptive": _refuse_adaptive,
    "events": _refuse_events,
    "per_sample": _refuse_per_sample,
    "compile": _refuse_compile,
    "checkpoint": _refuse_checkpoint,
    "torch_func": _refuse_torch_func,
    "half": _refuse_half,
}
# The flags that ask for no option and so have nothing to refuse: own_dense (Hermite is used instead, see
# test_dense_output), adjoint (every method has it), implicit and own_driver (what the method is, not a request).
NOT_REQUESTS = {"own_dense", "adjoint", "implicit", "own_driver"}


def test_every_capability_is_checked():
    assert set(REFUSALS) | NOT_REQUESTS == {f.name for f in Capabilities.__dataclass_fields__.values()}


@pytest.mark.parametrize(
    "name,flag",
    [(n, flag) for n in NAMES for flag in REFUSALS if not getattr(METHODS[n].capabilities, flag)],
)
def test_what_a_method_cannot_do_is_refused(name, flag):
    REFUSALS[flag](name)


@pytest.mark.parametrize("name", methods("adaptive"))
def test_adaptive_methods_refuse_step_size(name):
    with pytest.raises(ValueError, match="step_size"):
        _solve(name, options={"step_size": 0.1})


@pytest.mark.parametrize("name", methods("torch_func"))
def test_torch_func_jvp_goes_through(name):
    """A method declaring ``torch_func`` carries ``torch.func.jvp``: d y(1) / d y0 of decay is ``e^{-1}``."""
    kw, tol = setting(name)
    _, tangent = torch.func.jvp(
        lambda y: solve(lambda t, x: -x, y, T, method=name, **kw).ys[-1], (Y0,), (torch.ones_like(Y0),)
    )
    torch.testing.assert_close(tangent, torch.full_like(Y0, math.exp(-1.0)), rtol=0, atol=tol)


@pytest.mark.parametrize("name", methods("half", unwanted=("own_driver",)))
def test_half_precision_solves(name):
    """A method declaring ``half`` solves a float16 state in float16 (its error ratio in float32)."""
    kw = {"rtol": 1e-2, "atol": 1e-3} if METHODS[name].capabilities.adaptive else {"options": {"step_size": 0.125}}
    ys = solve(lambda t, y: -y, Y0.half(), T.half(), method=name, **kw).ys
    assert ys.dtype == torch.float16
    assert abs(ys[-1, 0].item() - math.exp(-1.0)) < 3e-2  # euler at h = 1/8: 2.4e-2


# --- float32 on a device against float64 on the CPU (the check benchmarks/gpu_check.py reports as a table).

CUDA = pytest.param(
    "cuda",
    marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"
    ),
)
DEVICES = ["cpu", CUDA]


# (name, per-sample clock): every method that runs in the solvers' loop, then every per-sample clock.
AGREEMENT_CASES = [(n, False) for n in methods(unwanted=("own_driver",))] + [(n, True) for n in methods("per_sample")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "name,per_sample", AGREEMENT_CASES, ids=lambda v: {True: "per_sample", False: "joint"}.get(v, v)
)
def test_float32_on_a_device_agrees_with_float64_on_the_cpu(name, per_sample, device):
    """A damped rotation, batch 4, 3 outputs on [0, 2]: the float32 solve on ``device`` within 10 tolerance
    units of the float64 CPU solve (an adaptive one: or as close to the closed form as the float64 solve is),
    for every method that runs in the solvers' loop and every per-sample clock. Second-order pairs at rtol
    1e-4 (at 1e-5 adaptive_heun's per-sample clock takes 5 s here)."""
    tol = agreement.TOL if METHODS[name].order >= 3 else 1e-4
    case = agreement.case(name, per_sample=per_sample, tol=tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # implicit_adams' corrector warns in float32 at its default tolerances
        r = agreement.check_solve(case, torch.device(device), batch=4, n_outputs=3, tol=tol, t_end=2.0)
    assert r.passed, r


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["backprop", "adjoint"])
def test_float32_gradients_on_a_device_agree_with_float64_on_the_cpu(mode, device):
    rel = agreement.gradient_distance(mode, torch.device(device), batch=4, n_outputs=3, t_end=2.0)
    assert rel <= agreement.GRAD_REL, rel
