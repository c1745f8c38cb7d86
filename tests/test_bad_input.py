"""Bad input and edge cases at the solvers' public boundary: nothing silent, nothing unbounded.

Every case ends in one of two ways, and no other:

* a correct result, checked against the problem's exact solution; or
* an exception of the documented type whose message names the argument (or what went wrong) and
  the fix; the fragments checked here are the parts of the message a user needs.

Each case runs under a watchdog (:class:`Watchdog`): a wall limit of ``CASE_SECONDS`` seconds
(``SIGALRM``) and a limit of ``CASE_MEMORY`` bytes of resident memory above what the process held
when the case started (a sampling thread; a hard address-space limit stops a single huge
allocation). A case that runs over either fails as a hang or as unbounded memory instead of
stalling the suite. Failure messages start with the category (``WRONG ANSWER``, ``HANG``,
``MEMORY``, ``UNCLEAR ERROR``) so that a run can be tallied by category.
"""

from __future__ import annotations

import math
import os
import re
import resource
import signal
import threading
import time

import pytest
import torch

from neuralode import Event, SolverError, odeint, odeint_adjoint, odeint_dense, odeint_event, solve
from neuralode.solvers.adjoint.backsolve import solve_adjoint

F64 = torch.float64
F32 = torch.float32
CASE_SECONDS = 10.0
CASE_MEMORY = 512 * 2**20
_PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------------
# The watchdog.


class CaseTimeout(BaseException):
    """Raised in the case when its wall limit passes (a BaseException, so a bare ``except
    Exception`` in the code under test cannot swallow it)."""


class CaseMemory(BaseException):
    """Raised in the case when its resident memory grows past the limit."""


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _vm() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * _PAGE


class Watchdog:
    """Wall and memory limits for one case, enforced inside the test process.

    The wall limit is ``SIGALRM`` (its handler raises :class:`CaseTimeout` at the next bytecode,
    which the solvers' Python loops reach every step). Memory is sampled every 10 ms by a thread;
    past the limit it sends ``SIGUSR1``, whose handler raises :class:`CaseMemory`. A hard
    address-space limit (the process's size when the case starts plus twice the case limit)
    makes one huge allocation fail at once rather than take the machine's memory.
    """

    def __init__(self, seconds: float = CASE_SECONDS, memory: int = CASE_MEMORY):
        self.seconds, self.memory = seconds, memory
        self.peak = 0

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            grown = _rss() - self._base
            self.peak = max(self.peak, grown)
            if grown > self.memory and not self._fired:
                self._fired = True
                os.kill(os.getpid(), signal.SIGUSR1)

    def __enter__(self) -> Watchdog:
        def on_alarm(signum, frame):
            raise CaseTimeout()

        def on_memory(signum, frame):
            raise CaseMemory()

        self._old = (signal.signal(signal.SIGALRM, on_alarm), signal.signal(signal.SIGUSR1, on_memory))
        self._limits = resource.getrlimit(resource.RLIMIT_AS)
        hard = self._limits[1]
        cap = _vm() + 2 * self.memory + 2**30
        if hard == resource.RLIM_INFINITY or cap < hard:
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
        # A case stopped mid-solve may leave autograd switched off (a context it was inside never
        # exited): restored at the end, so that the cases after it do not inherit that.
        self._grad = torch.is_grad_enabled()
        self._base = _rss()
        self._fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        self._stop.set()
        self._thread.join()
        resource.setrlimit(resource.RLIMIT_AS, self._limits)
        torch.set_grad_enabled(self._grad)
        signal.signal(signal.SIGALRM, self._old[0])
        signal.signal(signal.SIGUSR1, self._old[1])


def test_watchdog_stops_a_hang():
    """The watchdog itself: a loop that never ends is stopped at the wall limit."""
    start = time.monotonic()
    with pytest.raises(CaseTimeout):
        with Watchdog(seconds=0.2):
            while True:
                pass
    assert time.monotonic() - start < 2.0


def test_watchdog_stops_growing_memory():
    """The watchdog itself: a list growing without bound is stopped at the memory limit."""
    grow = []
    with pytest.raises((CaseMemory, MemoryError)):
        with Watchdog(seconds=5.0, memory=64 * 2**20):
            while True:
                grow.append([0.5] * 4096)
    del grow


# ---------------------------------------------------------------------------------------------
# Expectations.


class Error:
    """The case must raise ``kind`` with every fragment (a regular expression) in its message."""

    def __init__(self, kind: type, *fragments: str):
        self.kind, self.fragments = kind, fragments


class Result:
    """The case must return; ``check(value)`` raises AssertionError when the value is wrong."""

    def __init__(self, check):
        self.check = check


def close(actual, expected, tol: float) -> None:
    actual = torch.as_tensor(actual.detach() if isinstance(actual, torch.Tensor) else actual, dtype=F64)
    expected = torch.as_tensor(expected, dtype=F64)
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    err = float((actual - expected).abs().max()) if actual.numel() else 0.0
    if not err <= tol:
        raise AssertionError(
            f"error {err:.3g} > {tol:.3g}: got {actual.reshape(-1)[:6].tolist()}, "
            f"expected {expected.reshape(-1)[:6].tolist()}"
        )


def run_case(thunk, expect) -> None:
    """Run one case under the watchdog and hold it to its expectation."""
    try:
        with Watchdog():
            try:
                value = thunk()
            except (CaseTimeout, CaseMemory):
                raise
            except Exception as exc:  # noqa: BLE001 - classified below
                error, value = exc, None
            else:
                error = None
    except CaseTimeout:
        pytest.fail(f"HANG: the case ran past {CASE_SECONDS:g} s")
    except (CaseMemory, MemoryError):
        pytest.fail(f"MEMORY: the case grew past {CASE_MEMORY / 2**20:.0f} MiB")
    if isinstance(expect, Result):
        if error is not None:
            pytest.fail(f"UNCLEAR ERROR: expected a result, got {type(error).__name__}: {error}")
        try:
            expect.check(value)
        except AssertionError as exc:
            pytest.fail(f"WRONG ANSWER: {exc}")
        return
    if error is None:
        pytest.fail(f"WRONG ANSWER: expected {expect.kind.__name__}, the call returned without error")
    message = str(error)
    missing = [f for f in expect.fragments if not re.search(f, message, re.IGNORECASE | re.DOTALL)]
    if not isinstance(error, expect.kind) or missing:
        pytest.fail(
            f"UNCLEAR ERROR: expected {expect.kind.__name__} mentioning {missing or expect.fragments}; "
            f"got {type(error).__name__}: {message}"
        )


# ---------------------------------------------------------------------------------------------
# Problems with exact solutions.


def decay(t, y):
    return -y


def decay_tuple(t, y):
    return tuple(-p for p in y)


def oscillator(t, y):
    return torch.stack([y[1], -y[0]])


def growth(t, y):
    return y


Y0 = torch.tensor([1.0, 2.0], dtype=F64)
T = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
EXACT = Y0 * torch.exp(-T)[:, None]


def decays(tol: float = 1e-6, t=T, y0=Y0):
    """Check: the output is ``y0 exp(-(t - t0))`` at every output time."""

    def check(ys):
        tt = t.to(F64)
        close(ys, y0.to(F64) * torch.exp(-(tt - tt[0])).reshape(-1, *([1] * y0.dim())), tol)

    return Result(check)


def fresh(y0):
    """A copy of ``y0`` for one call, so that a case whose ``func`` changes its input in place
    cannot change the state the other cases start from."""
    if isinstance(y0, torch.Tensor):
        return y0.clone()
    if isinstance(y0, tuple):
        return tuple(fresh(p) for p in y0)
    return y0


def call(func=decay, y0=Y0, t=T, **kw):
    return lambda: solve(func, fresh(y0), t, **kw).ys


def call_odeint(func=decay, y0=Y0, t=T, **kw):
    return lambda: odeint(func, fresh(y0), t, **kw)


def call_adjoint(func=decay, y0=Y0, t=T, **kw):
    return lambda: odeint_adjoint(func, fresh(y0), t, **kw)


class Decay(torch.nn.Module):
    """``dy/dt = -k y`` with a learnable rate."""

    def __init__(self, k: float = 1.0):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(k, dtype=F64))

    def forward(self, t, y):
        return -self.k * y


CASES: list[tuple[str, object, object]] = []


def case(name: str, thunk, expect) -> None:
    CASES.append((name, thunk, expect))


# ---------------------------------------------------------------------------------------------
# y0.

case("y0-list", call(y0=[1.0, 2.0]), Error(TypeError, "y0 must be", "got list"))
case("y0-none", call(y0=None), Error(TypeError, "y0 must be", "NoneType"))
case("y0-number", call(y0=1.0), Error(TypeError, "y0 must be", "got float"))
case(
    "y0-int-tensor",
    call(y0=torch.tensor([1, 2])),
    Error(TypeError, "y0 must have a floating", "int64", r"y0\.float\(\)"),
)
case("y0-bool-tensor", call(y0=torch.tensor([True])), Error(TypeError, "y0 must have a floating", "bool"))
case("y0-nan", call(y0=torch.tensor([1.0, math.nan], dtype=F64)), Error(ValueError, "y0", "NaN", "finite"))
case("y0-inf", call(y0=torch.tensor([math.inf, 1.0], dtype=F64)), Error(ValueError, "y0", "infinite", "finite"))
case("y0-neg-inf", call(y0=torch.tensor([-math.inf], dtype=F64)), Error(ValueError, "y0", "finite"))
case("y0-tuple-empty", call(y0=()), Error(TypeError, "y0 must be", "tuple"))
case(
    "y0-tuple-nan",
    call(func=decay_tuple, y0=(Y0, torch.tensor([math.nan], dtype=F64))),
    Error(ValueError, r"y0\[1\]", "NaN"),
)
case("y0-tuple-mixed-dtype", call(func=decay_tuple, y0=(Y0, Y0.float())), Error(TypeError, "share dtype", r"y0\[1\]"))
case("y0-tuple-with-number", call(func=decay_tuple, y0=(Y0, 1.0)), Error(TypeError, "y0", "tuple"))
case(
    "y0-nested-tuple",
    call(func=lambda t, y: (-y[0], (-y[1][0],)), y0=(Y0, (Y0,))),
    Error(TypeError, r"y0\[1\]", "nested|tuple of tensors", "flat"),
)
case("y0-meta", call(y0=torch.empty(2, device="meta")), Error(ValueError, "y0", "meta", "real tensor|cpu"))
case("y0-meta-odeint", call_odeint(y0=torch.empty(3, device="meta")), Error(ValueError, "y0", "meta"))
case("y0-meta-adjoint", call_adjoint(func=Decay(), y0=torch.empty(3, device="meta")), Error(ValueError, "y0", "meta"))
case("y0-0d", call(y0=torch.tensor(2.0, dtype=F64)), decays(y0=torch.tensor(2.0, dtype=F64)))
case("y0-3d", call(y0=torch.ones(2, 3, 4, dtype=F64)), decays(y0=torch.ones(2, 3, 4, dtype=F64)))
case("y0-empty", call(y0=torch.empty(0, dtype=F64)), Result(lambda ys: close(ys, torch.empty(3, 0), 0.0)))
case("y0-float32", call(y0=Y0.float(), rtol=1e-5, atol=1e-7), decays(1e-4, y0=Y0.float()))
case(
    "y0-tuple",
    call(func=decay_tuple, y0=(Y0, Y0[:1] * 3)),
    Result(lambda ys: (close(ys[0], EXACT, 1e-6), close(ys[1], 3 * EXACT[:, :1], 1e-6))),
)
case(
    "y0-complex",
    call(func=lambda t, y: 1j * y, y0=torch.tensor([1.0 + 0j], dtype=torch.complex128)),
    Result(
        lambda ys: close(
            torch.view_as_real(ys), torch.view_as_real(torch.exp(1j * T.to(torch.complex128))[:, None]), 1e-6
        )
    ),
)


def _grad_y0():
    y0 = Y0.clone().requires_grad_()
    (g,) = torch.autograd.grad(solve(decay, y0, T).ys[-1].sum(), y0)
    return g


case("y0-requires-grad", _grad_y0, Result(lambda g: close(g, torch.full((2,), math.exp(-1.0)), 1e-6)))
case("y0-float16-default-rtol", call(y0=Y0.half()), Error(ValueError, "rtol", "float16", "rtol >="))
case("y0-bfloat16-default-rtol", call(y0=Y0.bfloat16()), Error(ValueError, "rtol", "bfloat16", "rtol >="))
case("y0-float16-loose", call(y0=Y0.half(), rtol=1e-2, atol=1e-3), decays(2e-2, y0=Y0.half()))
for _m in ("rodas5p", "radau5", "kvaerno5"):
    case(
        f"y0-float16-{_m}",
        call(y0=Y0.half(), rtol=1e-2, atol=1e-3, method=_m),
        Error(TypeError, "float16", _m, r"float32|\.float\(\)"),
    )
case(
    "y0-bfloat16-rodas5p",
    call(y0=Y0.bfloat16(), rtol=5e-2, atol=1e-3, method="rodas5p"),
    Error(TypeError, "bfloat16", "rodas5p", r"float32|\.float\(\)"),
)

# ---------------------------------------------------------------------------------------------
# t.

case("t-list", call(t=[0.0, 1.0]), Error(TypeError, "t must be", "list"))
case("t-int", call(t=torch.tensor([0, 1])), Error(TypeError, "t must have a floating", "int64"))
case("t-0d", call(t=torch.tensor(1.0, dtype=F64)), Error(ValueError, "t must be", "1-D", r"shape \(\)"))
case("t-empty", call(t=torch.empty(0, dtype=F64)), Error(ValueError, "t must be", "non-empty"))
case(
    "t-2d-without-per-sample",
    call(t=torch.zeros(2, 3, dtype=F64)),
    Error(ValueError, "t must be", r"\(2, 3\)", "per_sample"),
)
case("t-non-monotonic", call(t=torch.tensor([0.0, 1.0, 0.5], dtype=F64)), Error(ValueError, "strictly", r"t\[2\]"))
case("t-duplicate", call(t=torch.tensor([0.0, 1.0, 1.0], dtype=F64)), Error(ValueError, "strictly", r"t\[1\]"))
case("t-all-equal", call(t=torch.tensor([1.0, 1.0], dtype=F64)), Error(ValueError, "strictly"))
case("t-nan", call(t=torch.tensor([0.0, math.nan], dtype=F64)), Error(ValueError, "t must be finite", r"t\[1\]"))
case("t-inf", call(t=torch.tensor([0.0, math.inf], dtype=F64)), Error(ValueError, "t must be finite"))
case("t-meta", call(t=torch.empty(2, device="meta")), Error(ValueError, "t is on the meta device"))
case("t-rounds-equal", call(t=torch.tensor([1e20, 1e20 + 1.0], dtype=F64)), Error(ValueError, "strictly"))
case("t-one-time", call(t=torch.tensor([0.3], dtype=F64)), Result(lambda ys: close(ys, Y0[None], 0.0)))
case("t-decreasing", call(t=torch.flip(T, [0])), decays(1e-6, t=torch.flip(T, [0])))
case("t-float32-state-float64", call(t=T.float()), decays(1e-6))
case("t-negative-start", call(t=T - 5.0), decays(1e-6, t=T - 5.0))
case(
    "t-many-outputs",
    call(t=torch.linspace(0, 1, 1001, dtype=F64)),
    decays(1e-6, t=torch.linspace(0, 1, 1001, dtype=F64)),
)


def _grad_t():
    t = T.clone().requires_grad_()
    (g,) = torch.autograd.grad(solve(decay, Y0, t).ys[-1].sum(), t)
    return g


# d y(t_end)/d t_end = f(y(t_end)) = -y(t_end); d/dt0 = +y(t_end) for dy/dt = -y.
case("t-requires-grad", _grad_t, Result(lambda g: close(g, [3 * math.exp(-1.0), 0.0, -3 * math.exp(-1.0)], 1e-6)))

# ---------------------------------------------------------------------------------------------
# func.

case("func-not-callable", call(func=3), Error(TypeError, "func must be callable", "int"))
case("func-one-arg", call(func=lambda y: -y), Error(TypeError, r"func\(t, y\)", "lambda t, y"))
case("func-three-args", call(func=lambda t, y, z: -y), Error(TypeError, r"func\(t, y\)"))
case("func-wrong-shape", call(func=lambda t, y: y[:1]), Error(ValueError, "shape", r"\(1,\)", r"\(2,\)"))
case("func-wrong-dtype", call(func=lambda t, y: y.float()), Error(TypeError, "dtype", "float32", "float64"))
case("func-returns-list", call(func=lambda t, y: [-y]), Error(TypeError, "torch.Tensor", "list"))
case("func-returns-number", call(func=lambda t, y: 1.0), Error(TypeError, "torch.Tensor", "float"))
case("func-returns-none", call(func=lambda t, y: None), Error(TypeError, "torch.Tensor", "NoneType"))
case("func-returns-tuple-for-tensor", call(func=lambda t, y: (-y,)), Error(TypeError, "torch.Tensor", "tuple"))
case(
    "func-returns-tensor-for-tuple", call(func=lambda t, y: -y[0], y0=(Y0, Y0)), Error(TypeError, "tuple", "got Tensor")
)
case("func-returns-short-tuple", call(func=lambda t, y: (-y[0],), y0=(Y0, Y0)), Error(ValueError, "2 tensors", "got 1"))
case("func-nan-at-start", call(func=lambda t, y: y * math.nan), Error(SolverError, "Non-finite", "func"))
case(
    "func-nan-later",
    call(func=lambda t, y: torch.where(t < 0.5, -y, y * math.nan)),
    Error(SolverError, "Non-finite", "func"),
)
case(
    "func-nan-rk4",
    call(func=lambda t, y: y * math.nan, method="rk4", options={"step_size": 0.1}),
    Error(SolverError, "Non-finite", "step_size|func"),
)
case("func-raises", call(func=lambda t, y: (_ for _ in ()).throw(KeyError("user bug"))), Error(KeyError, "user bug"))
case(
    "func-blows-up",
    call(func=lambda t, y: y * y, y0=torch.tensor([1.0], dtype=F64), t=torch.tensor([0.0, 2.0], dtype=F64)),
    Error(SolverError, "t=0.99|t=1", "blow up|non-finite|underflow"),
)

# In-place changes of the state by func.
case("func-mul-inplace", call(func=lambda t, y: y.mul_(-1)), Error(ValueError, "in place", "func", r"return"))
case("func-neg-inplace-return", call(func=lambda t, y: y.neg_()), Error(ValueError, "in place", "func"))
case("func-add-inplace-other", call(func=lambda t, y: (y.add_(0.0), -y)[1]), Error(ValueError, "in place"))
case(
    "func-inplace-tuple",
    call(func=lambda t, y: (y[0].mul_(-1), -y[1]), y0=(Y0.clone(), Y0.clone())),
    Error(ValueError, "in place", "func"),
)
case(
    "func-inplace-rk4",
    call(func=lambda t, y: y.mul_(-1), method="rk4", options={"step_size": 0.1}),
    Error(ValueError, "in place", "func"),
)
case("func-inplace-euler-grid", call(func=lambda t, y: y.mul_(-1), method="euler"), Error(ValueError, "in place"))
case("func-inplace-rodas5p", call(func=lambda t, y: y.mul_(-1), method="rodas5p"), Error(ValueError, "in place"))
case(
    "func-inplace-adams",
    call(func=lambda t, y: y.mul_(-1), method="explicit_adams", options={"step_size": 0.1}),
    Error(ValueError, "in place"),
)
case(
    "func-inplace-later",
    call(func=lambda t, y: y.mul_(1.0).neg() if float(t) > 0.5 else -y),
    Error(ValueError, "in place", "func"),
)
case(
    "func-inplace-per-sample",
    call(func=lambda t, y: y.mul_(-1), y0=torch.ones(3, 2, dtype=F64), options={"per_sample": True}),
    Error(ValueError, "in place"),
)
case(
    "func-inplace-adjoint", call_adjoint(func=lambda t, y: y.mul_(-1), adjoint_params=()), Error(ValueError, "in place")
)


def _y0_after_inplace_func():
    y0 = Y0.clone()
    _try(lambda: solve(lambda t, y: y.mul_(-1), y0, T))
    return y0


case("func-inplace-y0-unchanged", _y0_after_inplace_func, Result(lambda y: close(y, [1.0, 2.0], 0.0)))


def _try(thunk):
    try:
        thunk()
    except Exception:  # noqa: BLE001 - only the side effect matters here
        pass


# ---------------------------------------------------------------------------------------------
# Tolerances.

case("rtol-negative", call(rtol=-1e-6), Error(ValueError, "rtol", "non-negative", "-1e-06"))
case("atol-negative", call(atol=-1.0), Error(ValueError, "atol", "non-negative"))
case("rtol-nan", call(rtol=math.nan), Error(ValueError, "rtol", "finite"))
case("atol-inf", call(atol=math.inf), Error(ValueError, "atol", "finite"))
case("rtol-string", call(rtol="1e-6"), Error(TypeError, "rtol", "str"))
case("rtol-none", call(rtol=None), Error(TypeError, "rtol", "NoneType"))
case("rtol-atol-zero", call(rtol=0.0, atol=0.0), Error(ValueError, "rtol and atol are both 0", "positive atol"))
case(
    "rtol-tensor-bad-shape",
    call(rtol=torch.ones(3, dtype=F64) * 1e-6),
    Error(ValueError, "rtol", r"\(3,\)", "broadcast"),
)
case(
    "rtol-tensor-negative", call(rtol=torch.tensor([1e-6, -1.0], dtype=F64)), Error(ValueError, "rtol", "non-negative")
)
case("rtol-tensor-ok", call(rtol=torch.tensor([1e-7, 1e-8], dtype=F64)), decays(1e-6))
case(
    "rtol-tuple-wrong-length",
    call(func=decay_tuple, y0=(Y0, Y0), rtol=(1e-6,)),
    Error(ValueError, "rtol", "one entry per tensor"),
)
case(
    "rtol-tuple-ok",
    call(func=decay_tuple, y0=(Y0, Y0), rtol=(1e-7, 1e-8)),
    Result(lambda ys: (close(ys[0], EXACT, 1e-6), close(ys[1], EXACT, 1e-6))),
)
case(
    "tol-float32-below-resolution",
    call(y0=Y0.float(), rtol=1e-15, atol=1e-15),
    Error(ValueError, "rtol", "float32", "resolve", r"rtol >="),
)
case("tol-float64-below-resolution", call(rtol=1e-20, atol=1e-20), Error(ValueError, "rtol", "float64", r"rtol >="))
case("tol-float32-small-rtol-with-atol", call(y0=Y0.float(), rtol=1e-12, atol=1e-6), decays(1e-5, y0=Y0.float()))
case("tol-float32-default", call(y0=Y0.float()), decays(1e-5, y0=Y0.float()))
case("tol-float64-tight", call(rtol=1e-13, atol=1e-13), decays(1e-11))
case(
    "tol-float32-per-sample-below",
    call(y0=torch.ones(2, 2), t=T.float(), rtol=1e-15, atol=1e-15, options={"per_sample": True}),
    Error(ValueError, "rtol", "float32"),
)
case(
    "tol-float32-adjoint-below",
    call_adjoint(func=Decay(), y0=Y0.float(), t=T.float(), rtol=1e-15, atol=1e-15),
    Error(ValueError, "rtol", "float32"),
)

# ---------------------------------------------------------------------------------------------
# Methods.

case("method-unknown", call(method="dopri"), Error(ValueError, "Unknown method 'dopri'", "dopri5"))
case("method-typo-suggests", call(method="rk45"), Error(ValueError, "Unknown method", "Valid methods"))
case("method-wrong-case", call(method="RK4"), Error(ValueError, "Unknown method 'RK4'", "did you mean 'rk4'"))
case("method-empty", call(method=""), Error(ValueError, "Unknown method"))
case("method-int", call(method=5), Error(TypeError, "method must be a string", "int"))
case("method-none-default", call(method=None), decays(1e-6))
for _m, _tol, _opts in [
    ("dopri5", 1e-6, None),
    ("tsit5", 1e-6, None),
    ("dopri8", 1e-6, None),
    ("bosh3", 1e-5, None),
    ("fehlberg2", 1e-4, None),
    ("adaptive_heun", 1e-4, None),
    ("rk4", 1e-6, {"step_size": 0.05}),
    ("rk4_38", 1e-6, {"step_size": 0.05}),
    ("midpoint", 1e-3, {"step_size": 0.01}),
    ("euler", 2e-2, {"step_size": 0.01}),
    ("explicit_adams", 1e-5, {"step_size": 0.01, "max_order": 6}),
    ("implicit_adams", 1e-5, {"step_size": 0.01}),
    ("rodas5p", 1e-6, None),
    ("radau5", 1e-6, None),
    ("kvaerno5", 1e-5, None),
    ("auto", 1e-6, None),
]:
    case(f"method-{_m}-correct", call(method=_m, options=_opts), decays(_tol))
case(
    "method-stiff-with-explicit",
    call(
        func=lambda t, y: -1e5 * (y - torch.cos(t)),
        y0=torch.zeros(1, dtype=F64),
        t=torch.tensor([0.0, 10.0], dtype=F64),
    ),
    Error(SolverError, "stiff", "rodas5p|radau5"),
)

# ---------------------------------------------------------------------------------------------
# Options.

case("options-list", call(options=[("step_size", 0.1)]), Error(TypeError, "options must be a dict", "list"))
case("option-unknown", call(options={"bogus": 1}), Error(ValueError, "Unknown option 'bogus'", "Valid options"))
case(
    "option-typo-suggests",
    call(options={"max_steps": 10}),
    Error(ValueError, "Unknown option 'max_steps'", "max_num_steps"),
)
case("option-step-size-on-adaptive", call(options={"step_size": 0.1}), Error(ValueError, "step_size", "dopri5"))
case(
    "option-per-sample-fixed",
    call(method="rk4", options={"per_sample": True, "step_size": 0.1}),
    Error(ValueError, "per_sample", "rk4", "adaptive|dopri5"),
)
case(
    "option-per-sample-rodas5p",
    call(method="rodas5p", options={"per_sample": True}),
    Error(ValueError, "per_sample", "rodas5p"),
)
case("option-per-sample-bad", call(options={"per_sample": "yes"}), Error(ValueError, "per_sample", "'yes'"))
case(
    "option-step-size-negative",
    call(method="rk4", options={"step_size": -0.1}),
    Error(ValueError, "step_size", "positive"),
)
case(
    "option-step-size-zero", call(method="rk4", options={"step_size": 0.0}), Error(ValueError, "step_size", "positive")
)
case("option-step-size-nan", call(method="rk4", options={"step_size": math.nan}), Error(ValueError, "step_size"))
case("option-step-size-string", call(method="rk4", options={"step_size": "0.1"}), Error(ValueError, "step_size"))
case("option-step-size-tensor", call(method="rk4", options={"step_size": torch.tensor(0.05)}), decays(1e-6))
case(
    "option-step-size-larger-than-span",
    call(t=T[::2], method="rk4", options={"step_size": 10.0}),
    decays(2e-2, t=T[::2]),
)
case(
    "option-grid-and-step",
    call(method="rk4", options={"step_size": 0.1, "grid_constructor": lambda f, y, t: t}),
    Error(ValueError, "mutually exclusive"),
)
case(
    "option-grid-arity",
    call(method="rk4", options={"grid_constructor": lambda t: t}),
    Error(TypeError, "grid_constructor", "three"),
)
case(
    "option-grid-wrong-ends",
    call(method="rk4", options={"grid_constructor": lambda f, y, t: torch.tensor([0.0, 0.5], dtype=F64)}),
    Error(ValueError, "grid_constructor", "from t\\[0\\]"),
)
case(
    "option-grid-not-monotonic",
    call(method="rk4", options={"grid_constructor": lambda f, y, t: torch.tensor([0.0, 0.7, 0.3, 1.0], dtype=F64)}),
    Error(ValueError, "grid_constructor", "monotonic"),
)
case(
    "option-grid-not-tensor",
    call(method="rk4", options={"grid_constructor": lambda f, y, t: [0.0, 1.0]}),
    Error(ValueError, "grid_constructor", "1-D tensor"),
)
case(
    "option-interp-bad",
    call(method="rk4", options={"interp": "quadratic"}),
    Error(ValueError, "interp", "'linear' or 'cubic'"),
)
case("option-first-step-negative", call(options={"first_step": -0.1}), Error(ValueError, "first_step", "positive"))
case(
    "option-min-above-max", call(options={"min_step": 0.5, "max_step": 0.1}), Error(ValueError, "min_step", "max_step")
)
case(
    "option-max-num-steps-zero",
    call(options={"max_num_steps": 0}),
    Error(ValueError, "max_num_steps", "positive integer"),
)
case("option-max-num-steps-float", call(options={"max_num_steps": 10.5}), Error(ValueError, "max_num_steps"))
case("option-max-num-steps-bool", call(options={"max_num_steps": True}), Error(ValueError, "max_num_steps"))
case(
    "option-max-num-steps-reached",
    call(options={"max_num_steps": 3}),
    Error(SolverError, "Too many steps", "max_num_steps"),
)
case("option-norm-not-callable", call(options={"norm": "rms"}), Error(TypeError, "norm", "callable"))
case(
    "option-norm-non-scalar",
    call(options={"norm": lambda x: x.abs()}),
    Error(ValueError, r"options\['norm'\]", "scalar", r"\(2,\)"),
)
case(
    "option-norm-returns-string", call(options={"norm": lambda x: "big"}), Error(TypeError, r"options\['norm'\]", "str")
)
case("option-norm-max-ok", call(options={"norm": lambda x: x.abs().max()}), decays(1e-6))
case("option-safety", call(options={"safety": 2.0}), Error(ValueError, "safety", r"\(0, 1\]"))
case("option-ifactor", call(options={"ifactor": 0.5}), Error(ValueError, "ifactor", ">= 1"))
case("option-dfactor", call(options={"dfactor": 0.0}), Error(ValueError, "dfactor"))
case("option-controller", call(options={"controller": "pid"}), Error(ValueError, "controller", "'pid'"))
case("option-stiffness", call(options={"stiffness": "warn"}), Error(ValueError, "stiffness", "'warn'"))
case("option-compile-bad", call(options={"compile": "fast"}), Error(ValueError, "compile", "'fast'"))
case("option-checkpoint-bad", call(options={"checkpoint": "yes"}), Error(TypeError, "checkpoint", "True or False"))
case("option-dense-int", call(options={"dense": 1}), Error(TypeError, "dense", "True or False"))
case("option-step-t-nan", call(options={"step_t": [0.5, math.nan]}), Error(TypeError, "step_t", "finite"))
case("option-jump-t-string", call(options={"jump_t": "0.5"}), Error(TypeError, "jump_t"))
case("option-step-t-ok", call(options={"step_t": [0.25, 0.75], "jump_t": torch.tensor([0.4])}), decays(1e-6))
case("option-dtype-int", call(options={"dtype": torch.int32}), Error(TypeError, "dtype", "floating"))
case("option-max-order", call(method="explicit_adams", options={"max_order": 0}), Error(ValueError, "max_order"))
case("option-max-iters", call(method="implicit_adams", options={"max_iters": 0}), Error(ValueError, "max_iters"))
case("option-compile-steps", call(method="rk4", options={"compile_steps": 0}), Error(ValueError, "compile_steps"))
case(
    "option-jacobian-bad",
    call(method="rodas5p", options={"jacobian": "exact"}),
    Error(ValueError, "jacobian", "'exact'"),
)
case("option-batch-dims-bad", call(method="rodas5p", options={"batch_dims": -1}), Error(ValueError, "batch_dims"))
case(  # the Rosenbrock methods compile (their run of steps); the other implicit methods refuse it
    "option-compile-implicit",
    call(method="radau5", options={"compile": True}),
    Error(ValueError, "compile", "radau5"),
)
case(
    "option-compile-and-checkpoint",
    call(options={"compile": True, "checkpoint": True}),
    Error(ValueError, "compile", "checkpoint"),
)
case(
    "option-min-step-reject",
    call(func=lambda t, y: -1e3 * y, options={"min_step": 0.1}),
    Error(SolverError, "min_step", "Lower"),
)
case("option-max-step-ok", call(options={"max_step": 0.01}), decays(1e-6))

# Fixed grids: counted before they are built.
BIG_SPAN = torch.tensor([0.0, 1e6], dtype=F64)
case(
    "fixed-huge-grid-rk4",
    call(method="rk4", t=BIG_SPAN, options={"step_size": 1e-3}),
    Error(ValueError, "1000000000 steps|1e\\+09 steps", "max_num_steps", "step_size"),
)
case(
    "fixed-huge-grid-euler",
    call(method="euler", t=torch.tensor([0.0, 1.0], dtype=F64), options={"step_size": 1e-9}),
    Error(ValueError, "steps", "max_num_steps"),
)
case(
    "fixed-huge-grid-odeint",
    call_odeint(method="midpoint", t=BIG_SPAN, options={"step_size": 1e-4}),
    Error(ValueError, "steps", "max_num_steps"),
)
case(
    "fixed-huge-grid-adjoint",
    call_adjoint(func=Decay(), method="rk4", t=BIG_SPAN, options={"step_size": 1e-3}),
    Error(ValueError, "steps", "max_num_steps"),
)
case(
    "fixed-max-num-steps-small",
    call(method="rk4", options={"step_size": 0.01, "max_num_steps": 10}),
    Error(ValueError, "100 steps", "max_num_steps"),
)
case(
    "fixed-max-num-steps-raised", call(method="rk4", options={"step_size": 0.001, "max_num_steps": 1000}), decays(1e-9)
)
case(
    "fixed-max-num-steps-bad",
    call(method="rk4", options={"step_size": 0.1, "max_num_steps": -1}),
    Error(ValueError, "max_num_steps", "positive integer"),
)
case(
    "fixed-grid-from-t",
    call(method="rk4", t=torch.linspace(0, 1, 21, dtype=F64)),
    decays(1e-6, t=torch.linspace(0, 1, 21, dtype=F64)),
)

# ---------------------------------------------------------------------------------------------
# Events.

FALL = torch.tensor([1.0, 0.0], dtype=F64)  # height 1 m, at rest


def gravity(t, y):
    return torch.stack([y[1], torch.full_like(y[1], -9.81)])


def floor(t, y):
    return y[0]


case("event-fn-not-callable", lambda: Event(3), Error(TypeError, "Event fn", "callable", "int"))
case("event-fn-arity", lambda: Event(lambda y: y[0]), Error(TypeError, "Event fn", r"fn\(t, y\)", "lambda t, y"))
case("event-reset-arity", lambda: Event(floor, reset=lambda y: y), Error(TypeError, "Event reset", r"reset\(t, y\)"))
case("event-direction", lambda: Event(floor, direction=2), Error(ValueError, "direction", "-1", "got 2"))
case("event-direction-bool", lambda: Event(floor, direction=True), Error(ValueError, "direction"))
case("event-terminal", lambda: Event(floor, terminal="yes"), Error(TypeError, "terminal", "True or False"))
case("event-reset-not-callable", lambda: Event(floor, reset=1.0), Error(TypeError, "reset", "callable"))
case(
    "events-not-list", call(func=gravity, y0=FALL, events=floor), Error(TypeError, "events must be a list", "function")
)
case("events-element", call(func=gravity, y0=FALL, events=[floor]), Error(TypeError, r"events\[0\]", "neuralode.Event"))
case(
    "event-returns-number",
    call(func=gravity, y0=FALL, events=[Event(lambda t, y: 1.0)]),
    Error(TypeError, r"events\[0\]\.fn", "torch.Tensor"),
)
case(
    "event-returns-empty",
    call(func=gravity, y0=FALL, events=[Event(lambda t, y: y[:0])]),
    Error(ValueError, r"events\[0\]\.fn", "empty"),
)
case(
    "event-returns-nan",
    call(func=gravity, y0=FALL, events=[Event(lambda t, y: y[0] * math.nan)]),
    Error(ValueError, r"events\[0\]\.fn", "non-finite"),
)
case(
    "event-returns-bool",
    call(func=gravity, y0=FALL, events=[Event(lambda t, y: y[0] > 0)]),
    Error(TypeError, r"events\[0\]\.fn", "real-valued", "bool"),
)
case(
    "event-reset-wrong-shape",
    call(
        func=gravity,
        y0=FALL,
        t=torch.tensor([0.0, 1.0], dtype=F64),
        events=[Event(floor, direction=-1, terminal=False, reset=lambda t, y: y[:1])],
    ),
    Error(ValueError, "reset", "shape"),
)


def _fall_time():
    sol = solve(gravity, FALL, torch.tensor([0.0, 2.0], dtype=F64), events=[Event(floor, direction=-1)])
    return sol.events[0].t


case("event-terminal-time", _fall_time, Result(lambda t: close(t, math.sqrt(2 / 9.81), 1e-9)))


def _bounce(e: float, t_end: float):
    reset = lambda t, y: torch.stack([y[0], -e * y[1]])  # noqa: E731
    return solve(
        gravity,
        FALL,
        torch.tensor([0.0, t_end], dtype=F64),
        events=[Event(floor, direction=-1, terminal=False, reset=reset)],
    )


_T1 = math.sqrt(2 / 9.81)


def _bounce_times(e: float, n: int) -> list[float]:
    # First impact at t1; the k-th flight after it lasts 2 e^k t1.
    out, t = [], _T1
    for k in range(n):
        out.append(t)
        t += 2 * e ** (k + 1) * _T1
    return out


case(
    "event-bouncing-ball",
    lambda: [float(r.t) for r in _bounce(0.8, 2.0).events],
    Result(lambda ts: close(ts, [b for b in _bounce_times(0.8, 10) if b < 2.0], 1e-7)),
)
# Restitution 0.5: impacts accumulate at t1 (1 + 2 (e / (1 - e))) = 3 t1 ~ 1.355 s.
case("event-zeno-ball", lambda: _bounce(0.5, 3.0), Error(SolverError, "accumulat", "Zeno|events", r"t=1\.35"))
case("event-zeno-ball-low-e", lambda: _bounce(0.2, 3.0), Error(SolverError, "accumulat", "Zeno|events"))


def _two_balls(separate: bool):
    """Two balls dropped together from 1 m, restitution 0.8, to t = 1.5 s (two impacts each)."""
    e = 0.8

    def field(t, y):
        g = torch.full_like(y[1], -9.81)
        return torch.stack([y[1], g, y[3], g])

    if separate:
        events = [
            Event(
                lambda t, y: y[0],
                direction=-1,
                terminal=False,
                reset=lambda t, y: torch.stack([y[0], -e * y[1], y[2], y[3]]),
            ),
            Event(
                lambda t, y: y[2],
                direction=-1,
                terminal=False,
                reset=lambda t, y: torch.stack([y[0], y[1], y[2], -e * y[3]]),
            ),
        ]
    else:

        def reset(t, y):
            v = torch.stack([y[1], y[3]])
            v = torch.where((torch.stack([y[0], y[2]]) <= 1e-9) & (v < 0), -e * v, v)
            return torch.stack([y[0], v[0], y[2], v[1]])

        events = [Event(lambda t, y: torch.stack([y[0], y[2]]), direction=-1, terminal=False, reset=reset)]
    return solve(
        field, torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=F64), torch.tensor([0.0, 1.5], dtype=F64), events=events
    ).ys[-1]


def _ball_at(t: float, e: float = 0.8) -> list[float]:
    """Height and velocity at ``t`` of a ball dropped from 1 m (``t`` after the second impact, before the third)."""
    t2 = _bounce_times(e, 2)[1]
    v = e * e * 9.81 * _T1  # launch speed after the second impact: e^2 sqrt(2 g h0) = e^2 g t1
    return [v * (t - t2) - 4.905 * (t - t2) ** 2, v - 9.81 * (t - t2)]


case(
    "event-two-resets-same-time",
    lambda: _two_balls(True),
    Error(SolverError, r"events\[0\] and events\[1\]", "same time", "one Event"),
)
case("event-two-balls-one-event", lambda: _two_balls(False), Result(lambda y: close(y, _ball_at(1.5) * 2, 1e-8)))


def _zeno_odeint():
    return odeint(
        gravity, FALL, torch.tensor([0.0, 3.0], dtype=F64), method="dopri5", options={"max_num_steps": 100000}
    )


case("event-ball-without-events", _zeno_odeint, Result(lambda ys: close(ys[-1], [1.0 - 9.81 * 4.5, -9.81 * 3], 1e-8)))

# torchdiffeq's event mode.
case(
    "event-fn-odeint-three-times",
    lambda: odeint(gravity, FALL, T, event_fn=floor),
    Error(ValueError, "event_fn", "two times"),
)
case(
    "event-fn-not-callable-odeint",
    lambda: odeint(gravity, FALL, T[:2], event_fn=3),
    Error(TypeError, "event_fn", "callable"),
)
case(
    "event-fn-rk4-no-step",
    lambda: odeint(gravity, FALL, T[:2], event_fn=floor, method="rk4"),
    Error(ValueError, "step_size", "rk4"),
)
case(
    "event-fn-scipy",
    lambda: odeint(gravity, FALL, T[:2], event_fn=floor, method="scipy_solver"),
    Error(ValueError, "scipy_solver", "events"),
)
case(
    "event-fn-per-sample",
    lambda: odeint(gravity, FALL, T[:2], event_fn=floor, options={"per_sample": True}),
    Error(ValueError, "per_sample", "event_fn"),
)
case("event-fn-correct", lambda: odeint(gravity, FALL, T[:2], event_fn=floor)[0], Result(lambda t: close(t, _T1, 1e-9)))
case("odeint-event-t0-string", lambda: odeint_event(gravity, FALL, "0", event_fn=floor), Error(TypeError, "t0", "str"))
case(
    "odeint-event-t0-two",
    lambda: odeint_event(gravity, FALL, torch.zeros(2), event_fn=floor),
    Error(ValueError, "t0", "one time"),
)
case(
    "odeint-event-reverse-bad",
    lambda: odeint_event(gravity, FALL, 0.0, event_fn=floor, reverse_time=1),
    Error(TypeError, "reverse_time", "True or False"),
)
case(
    "odeint-event-correct",
    lambda: odeint_event(
        lambda t, y: torch.ones_like(y), torch.zeros(1, dtype=F64), 0.5, event_fn=lambda t, y: y[0] - 2.0
    )[0],
    Result(lambda t: close(t, 2.5, 1e-9)),
)
case(
    "odeint-event-reverse",
    lambda: odeint_event(
        lambda t, y: torch.ones_like(y),
        torch.zeros(1, dtype=F64),
        0.0,
        event_fn=lambda t, y: y[0] + 1.5,
        reverse_time=True,
    )[0],
    Result(lambda t: close(t, -1.5, 1e-9)),
)
case(
    "odeint-event-adjoint",
    lambda: odeint_event(Decay(), Y0, 0.0, event_fn=lambda t, y: y[0] - 0.5, odeint_interface=odeint_adjoint)[0],
    Result(lambda t: close(t, math.log(2.0), 1e-7)),
)
case(
    "odeint-event-rk4",
    lambda: odeint_event(decay, Y0, 0.0, event_fn=lambda t, y: y[0] - 0.5, method="rk4", options={"step_size": 0.01})[
        0
    ],
    Result(lambda t: close(t, math.log(2.0), 1e-7)),
)
# Events that never fire.
case(
    "odeint-event-never-oscillation",
    lambda: odeint_event(oscillator, torch.tensor([1.0, 0.0], dtype=F64), 0.0, event_fn=lambda t, y: y[0] - 2.0),
    Error(SolverError, "No event", "max_num_steps"),
)
case(
    "odeint-event-never-decay",
    lambda: odeint_event(decay, torch.tensor([1.0]), 0.0, event_fn=lambda t, y: y[0] + 1.0),
    Error(SolverError, "No event", "max_num_steps"),
)
case(
    "odeint-event-never-growth",
    lambda: odeint_event(growth, torch.tensor([1.0]), 0.0, event_fn=lambda t, y: y[0] + 1.0),
    Error(SolverError, "No event|float32", "event_fn|max_num_steps"),
)
case(
    "odeint-event-never-growth-f64",
    lambda: odeint_event(growth, torch.tensor([1.0], dtype=F64), 0.0, event_fn=lambda t, y: y[0] + 1.0),
    Error(SolverError, "No event|overflow|blow", "event_fn|max_num_steps"),
)
case(
    "odeint-event-never-constant",
    lambda: odeint_event(
        lambda t, y: torch.zeros_like(y), torch.ones(1, dtype=F64), 0.0, event_fn=lambda t, y: y[0] - 2.0
    ),
    Error(SolverError, "No event", "max_num_steps"),
)
case(
    "odeint-event-never-rk4",
    lambda: odeint_event(
        oscillator,
        torch.tensor([1.0, 0.0], dtype=F64),
        0.0,
        event_fn=lambda t, y: y[0] - 2.0,
        method="rk4",
        options={"step_size": 0.01},
    ),
    Error(SolverError, "No event", "max_num_steps"),
)
case(
    "odeint-event-never-own-bound",
    lambda: odeint_event(
        oscillator,
        torch.tensor([1.0, 0.0], dtype=F64),
        0.0,
        event_fn=lambda t, y: y[0] - 2.0,
        options={"max_num_steps": 50},
    ),
    Error(SolverError, "No event", "50"),
)
case(
    "odeint-event-never-adjoint",
    lambda: odeint_event(
        Decay(0.0),
        torch.tensor([1.0, 0.0], dtype=F64),
        0.0,
        event_fn=lambda t, y: y[0] - 2.0,
        odeint_interface=odeint_adjoint,
    ),
    Error(SolverError, "No event", "max_num_steps"),
)
case(
    "solve-events-scipy",
    call(func=gravity, y0=FALL, method="scipy_solver", events=[Event(floor)]),
    Error(ValueError, "scipy_solver", "events"),
)

# ---------------------------------------------------------------------------------------------
# odeint_dense.

case("dense-t0-two", lambda: odeint_dense(decay, Y0, torch.zeros(2), 1.0), Error(ValueError, "t0", "one time"))
case("dense-t1-string", lambda: odeint_dense(decay, Y0, 0.0, "1"), Error(TypeError, "t1", "str"))
case("dense-options-list", lambda: odeint_dense(decay, Y0, 0.0, 1.0, options=[]), Error(TypeError, "options", "list"))
case("dense-t0-equals-t1", lambda: odeint_dense(decay, Y0, 1.0, 1.0), Error(ValueError, "strictly|t0|t1"))
case(
    "dense-correct",
    lambda: odeint_dense(decay, Y0, 0.0, 1.0)(torch.tensor([0.3, 0.7], dtype=F64)),
    Result(lambda ys: close(ys, Y0 * torch.exp(-torch.tensor([0.3, 0.7], dtype=F64))[:, None], 1e-6)),
)
case(
    "dense-evaluate-outside",
    lambda: odeint_dense(decay, Y0, 0.0, 1.0)(torch.tensor([2.0], dtype=F64)),
    Error(ValueError, "outside|solved|span"),
)
case(
    "dense-rk4",
    lambda: odeint_dense(decay, Y0, 0.0, 1.0, method="rk4", options={"step_size": 0.01})(
        torch.tensor([0.5], dtype=F64)
    ),
    Result(lambda ys: close(ys, Y0[None] * math.exp(-0.5), 1e-7)),
)

# ---------------------------------------------------------------------------------------------
# Per-sample clocks.

YB = torch.tensor([[1.0], [2.0], [3.0]], dtype=F64)
TB = torch.tensor([[0.0, 1.0], [0.0, 2.0], [1.0, 1.5]], dtype=F64)
case(
    "per-sample-correct",
    call(y0=YB, t=TB, options={"per_sample": True}),
    Result(lambda ys: close(ys[-1, :, 0], YB[:, 0] * torch.exp(-(TB[:, 1] - TB[:, 0])), 1e-6)),
)
case(
    "per-sample-t-3d",
    call(y0=YB, t=torch.zeros(3, 2, 1, dtype=F64), options={"per_sample": True}),
    Error(ValueError, "t", "per_sample|shape"),
)
case(
    "per-sample-t-rows-wrong",
    call(y0=YB, t=TB[:2], options={"per_sample": True}),
    Error(ValueError, "t", "3|rows|batch"),
)
case(
    "per-sample-t-row-nan",
    call(y0=YB, t=torch.tensor([[0.0, 1.0], [0.0, math.nan], [0.0, 1.0]], dtype=F64), options={"per_sample": True}),
    Error(ValueError, "t", "finite|NaN"),
)
case(
    "per-sample-t-row-not-monotonic",
    call(y0=YB, t=torch.tensor([[0.0, 1.0, 0.5]] * 3, dtype=F64), options={"per_sample": True}),
    Error(ValueError, "t", "strictly|monoton"),
)
case(
    "per-sample-y0-0d",
    call(y0=torch.tensor(1.0, dtype=F64), options={"per_sample": True}),
    Error(ValueError, "y0", "batch|dimension"),
)
case("per-sample-y0-nan", call(y0=YB * math.nan, options={"per_sample": True}), Error(ValueError, "y0", "NaN"))
case("per-sample-float16", call(y0=YB.half(), options={"per_sample": True}), Error(ValueError, "rtol", "float16"))
case(
    "per-sample-tuple",
    call(func=decay_tuple, y0=(YB, YB), options={"per_sample": True}),
    Result(lambda ys: close(ys[0][-1], YB * math.exp(-1.0), 1e-6)),
)


def _closure_func():
    rates = torch.tensor([[1.0], [5.0], [0.1]], dtype=F64)
    return lambda t, y: -rates * y


case(
    "per-sample-compact-closure",
    call(
        func=_closure_func(),
        y0=YB,
        t=torch.tensor([[0.0, 0.1], [0.0, 0.2], [0.0, 3.0]], dtype=F64),
        options={"per_sample": "compact"},
    ),
    Error(ValueError, "compact", "batch", "state|per_sample=True"),
)
case(
    "per-sample-compact-ok",
    call(y0=YB, t=torch.tensor([[0.0, 0.1], [0.0, 0.2], [0.0, 3.0]], dtype=F64), options={"per_sample": "compact"}),
    Result(lambda ys: close(ys[-1, :, 0], YB[:, 0] * torch.exp(-torch.tensor([0.1, 0.2, 3.0], dtype=F64)), 1e-6)),
)

# ---------------------------------------------------------------------------------------------
# The adjoint.


def _adjoint_grad(**kw):
    f = Decay(0.7)
    ys = odeint_adjoint(f, Y0, T, **kw)
    ys[-1].sum().backward()
    return f.k.grad


# d/dk sum(y0 exp(-k t)) at t = 1: -t sum(y0) exp(-k t).
case("adjoint-gradient", _adjoint_grad, Result(lambda g: close(g, -3 * math.exp(-0.7), 1e-6)))
case("adjoint-rtol-negative", lambda: _adjoint_grad(adjoint_rtol=-1.0), Error(ValueError, "adjoint_rtol", "-1"))
case("adjoint-atol-nan", lambda: _adjoint_grad(adjoint_atol=math.nan), Error(ValueError, "adjoint_atol"))
case(
    "adjoint-options-bogus",
    lambda: odeint_adjoint(Decay(), Y0, T, adjoint_options={"bogus": 1}),
    Error(ValueError, "adjoint_options", "'bogus'", "Valid options"),
)
case(
    "adjoint-options-list",
    lambda: odeint_adjoint(Decay(), Y0, T, adjoint_options=[]),
    Error(TypeError, "adjoint_options", "dict"),
)
case(
    "adjoint-options-norm-bad",
    lambda: odeint_adjoint(Decay(), Y0, T, adjoint_options={"norm": "l2"}),
    Error(ValueError, "norm", "seminorm"),
)
case(
    "adjoint-method-unknown",
    lambda: odeint_adjoint(Decay(), Y0, T, adjoint_method="dopri"),
    Error(ValueError, "adjoint_method|Unknown method", "dopri5"),
)
case("adjoint-params-missing", lambda: odeint_adjoint(decay, Y0, T), Error(ValueError, "adjoint_params"))
case(
    "adjoint-params-not-tensors",
    lambda: odeint_adjoint(decay, Y0, T, adjoint_params=[1.0]),
    Error(TypeError, "adjoint_params"),
)
case("adjoint-t-list", lambda: odeint_adjoint(Decay(), Y0, [0.0, 1.0]), Error(TypeError, "t must be"))
case("adjoint-y0-nan", lambda: odeint_adjoint(Decay(), Y0 * math.nan, T), Error(ValueError, "y0", "NaN"))
case(
    "adjoint-interp-per-sample",
    lambda: odeint_adjoint(Decay(), YB, TB, options={"per_sample": True}, adjoint_options={"interpolate": True}),
    Error(ValueError, "interpolate", "per_sample"),
)


def _adjoint_nan_grad():
    f = Decay()
    ys = odeint_adjoint(f, Y0, T)
    (ys[-1] * math.nan).sum().backward()
    return f.k.grad


case("adjoint-nan-incoming-grad", _adjoint_nan_grad, Error(ValueError, "gradient", "NaN", "loss|grad_output|output"))


def _adjoint_rodas():
    f = Decay(0.7)
    ys = odeint_adjoint(f, Y0, T, method="rodas5p")
    ys[-1].sum().backward()
    return f.k.grad


case("adjoint-rodas5p-gradient", _adjoint_rodas, Result(lambda g: close(g, -3 * math.exp(-0.7), 1e-5)))
case(
    "adjoint-solve-bogus-options",
    lambda: solve_adjoint(Decay(), Y0, T, options={"bogus": 1}),
    Error(ValueError, "Unknown option 'bogus'"),
)


@pytest.mark.parametrize("name,thunk,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, thunk, expect):
    run_case(thunk, expect)


def test_case_count():
    """The module holds at least the 150 cases the reliability issue asks for, with unique names."""
    names = [c[0] for c in CASES]
    assert len(names) >= 150, len(names)
    assert len(set(names)) == len(names)
