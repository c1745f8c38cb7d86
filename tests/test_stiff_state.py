"""The implicit steppers' state across steps: named records on their Stepper, changed by the loop's verdicts
(``settle``), and a Newton failure returned as ``StepResult.shrink``."""

from __future__ import annotations

import torch

from neuralode.solvers.control.norms import _ErrorNorm
from neuralode.solvers.methods.auto import AUTO, AutoState, make_auto_stepper
from neuralode.solvers.methods.esdirk import ESDIRK_METHODS, ESDIRKState
from neuralode.solvers.methods.esdirk import make_stepper as make_esdirk_stepper
from neuralode.solvers.methods.implicit_options import AutoOptions, ImplicitOptions
from neuralode.solvers.methods.radau import RADAU5, RadauState, make_stepper
from neuralode.solvers.methods.registry import METHODS
from neuralode.solvers.methods.rosenbrock import RosenbrockState
from neuralode.solvers.methods.rosenbrock import make_stepper as make_rosenbrock_stepper
from neuralode.solvers.methods.stepper import Stepper
from neuralode.solvers.methods.tableau import TSIT5
from neuralode.solvers.options import AdaptiveOptions, StepControl
from neuralode.solvers.problem import _Problem
from neuralode.solvers.solution import SolverStats

F64 = torch.float64


def _decay(t, y):  # strongly nonlinear: a long step defeats the simplified Newton iteration from y0
    return -(y**3) * torch.exp(y)


def _problem(f, y0):
    problem = _Problem(f, (y0,), False, SolverStats())
    return problem, _ErrorNorm(problem, 1e-6, 1e-9, None)


def test_radau_polynomial_changes_only_when_the_loop_accepts():
    """The starting polynomial is the last accepted step's: an attempt does not set it, a rejection leaves it in
    place (the retry from the same point starts from it), an acceptance replaces it."""
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    problem, error = _problem(_decay, y0)
    take = make_stepper(problem, RADAU5, False, ImplicitOptions(), problem, error)
    assert isinstance(take, Stepper) and isinstance(take.state, RadauState) and take.state.poly is None
    h = 0.05
    _, first = take(0, 0.0, y0, None, h, problem)
    assert first.shrink is None and take.state.poly is None  # not before the verdict
    take.settle(True)
    h_acc, Z_acc = take.state.poly
    assert h_acc == h and all(torch.equal(z, k) for z, k in zip(Z_acc.unbind(0), first.k))
    _, second = take(0, h, first.y1, None, 2 * h, problem)
    assert take.state.poly[1] is Z_acc  # the attempt reads the polynomial, it does not replace it
    take.settle(False)
    assert take.state.poly[1] is Z_acc and take.state.expect[0] == "retry"
    jacobians = problem.stats.n_jac_evals
    _, retry = take(0, h, first.y1, None, h, problem)
    assert take.state.poly[1] is Z_acc
    take.settle(True)
    assert take.state.poly[0] == h and take.state.poly[1] is not Z_acc
    assert torch.equal(take.state.poly[1][-1], retry.k[-1])
    # A step from anywhere but the accepted step's end (an event's reset) is a new start: no polynomial.
    take(0, 2 * h, retry.y1.clone(), None, h, problem)
    assert take.state.poly is None and problem.stats.n_jac_evals > jacobians


def test_radau_newton_failure_is_a_shrink_not_an_error_estimate():
    y0, h = torch.tensor([1.0, 2.0], dtype=F64), 10.0
    problem, error = _problem(_decay, y0)
    take = make_stepper(problem, RADAU5, False, ImplicitOptions(control=StepControl(dfactor=0.5)), problem, error)
    _, step = take(0, 0.0, y0, None, h, problem)
    # RADAU5's reduction 0.8 * 20^(-1/8) = 0.55 is within the limit 0.5 of the controller's rejections.
    assert step.y_err is None and step.y1 is y0 and abs(step.shrink - 0.8 * 20.0 ** (-1.0 / 8.0)) < 1e-15
    take.settle(False)
    assert take.state.expect == ("retry", 0.0, y0) and take.state.eta == 1.0
    take2 = make_stepper(problem, RADAU5, False, ImplicitOptions(control=StepControl(dfactor=0.7)), problem, error)
    assert take2(0, 0.0, y0, None, h, problem)[1].shrink == 0.7


def test_esdirk_newton_failure_is_a_shrink_of_dfactor():
    y0, h = torch.tensor([1.0, 2.0], dtype=F64), 10.0
    problem, error = _problem(_decay, y0)
    take = make_esdirk_stepper(problem, ESDIRK_METHODS["kvaerno5"], False, ImplicitOptions(), problem, error)
    assert isinstance(take.state, ESDIRKState)
    _, step = take(0, 0.0, y0, None, h, problem)
    assert step.y_err is None and step.y1 is y0 and step.shrink == 0.2
    assert take.state.J is not None and take.state.y is y0 and take.state.t == 0.0


def test_rosenbrock_jacobian_is_kept_by_the_point_it_was_taken_at():
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    problem, error = _problem(_decay, y0)
    take = make_rosenbrock_stepper(problem, METHODS["rodas5p"].tableau, False, ImplicitOptions(), problem, error)
    assert isinstance(take.state, RosenbrockState) and take.state.lin is None
    _, step = take(0, 0.0, y0, None, 0.1, problem)
    take.settle(False)
    lin = take.state.lin
    take(0, 0.0, y0, None, 0.05, problem)  # the retry from the same point: the same Jacobian
    assert take.state.lin is lin and problem.stats.n_jac_evals == 1
    take.settle(True)
    take(0, 0.05, step.y1, None, 0.05, problem)
    assert take.state.lin is not lin and take.state.t == 0.05 and problem.stats.n_jac_evals == 2


def test_auto_counts_only_accepted_steps_towards_a_switch():
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    problem, error = _problem(_decay, y0)
    take = make_auto_stepper(problem, AUTO, False, AutoOptions(), problem, error)
    assert isinstance(take.state, AutoState) and isinstance(take.stiff_stepper.state, RosenbrockState)
    _, step = take(0, 0.0, y0, None, 0.01, problem)
    take.settle(False)
    assert take.state.accepted is None
    _, step = take(0, 0.0, y0, None, 0.005, problem)
    take.settle(True)
    assert take.state.accepted[2] is step
    nfe = problem.stats.nfe
    take(0, 0.005, step.y1, None, 0.005, problem)  # counted; tsit5's last stage serves as f0
    assert take.state.window == [0.005] and take.state.accepted is None
    assert problem.stats.nfe - nfe == TSIT5.stages - 1


def test_every_stepper_of_the_loop_is_a_stepper():
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    problem, error = _problem(_decay, y0)
    for name, opts in (("tsit5", AdaptiveOptions()), ("radau5", ImplicitOptions()), ("auto", AutoOptions())):
        take = METHODS[name].stepper(problem, opts=opts, error=error)
        assert isinstance(take, Stepper)
        take(0, 0.0, y0, None, 0.01, problem)
        take.settle(True)
