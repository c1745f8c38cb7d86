"""Flow matching: paths, couplings, the loss, sampling, exact and Hutchinson likelihoods, the
velocity networks, the digits data and the errors at the boundary."""

from __future__ import annotations

import itertools
import math
import sys

import pytest
import torch
from torch import nn

from neuralode.models.flow_matching import (
    UNetVelocity,
    VelocityMLP,
    bits_per_dim,
    cfm_loss,
    log_prob,
    ot_pairing,
    path_point,
    reflow_pairs,
    sample,
    wasserstein2,
)

A = torch.tensor([[0.3, -0.7], [0.5, -0.2]], dtype=torch.float64)
B = torch.tensor([0.4, -1.0], dtype=torch.float64)


class Affine(nn.Module):
    """``v(t, x) = A x + b``: its flow over [0, 1] is ``x(1) = e^A x(0) + A^{-1}(e^A − I) b``."""

    def __init__(self, a: torch.Tensor = A, b: torch.Tensor = B) -> None:
        super().__init__()
        self.a, self.b = nn.Parameter(a.clone()), nn.Parameter(b.clone())
        self.data_shape = (a.shape[0],)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x @ self.a.T + self.b

    def closed_form(self, x1: torch.Tensor) -> torch.Tensor:
        """``log p_1(x1)`` by the change of variables: ``log N(x0) − tr(A)``."""
        a, b = self.a.detach(), self.b.detach()
        e = torch.linalg.matrix_exp(a)
        c = torch.linalg.solve(a, (e - torch.eye(len(b), dtype=a.dtype)) @ b)
        x0 = torch.linalg.solve(e, (x1 - c).T).T
        return -0.5 * (x0 * x0).sum(1) - 0.5 * len(b) * math.log(2 * math.pi) - torch.trace(a)


class TowardsPoint(nn.Module):
    """The exact marginal velocity of the linear path to a single data point ``a``: ``(a − x) / (1 − t)``."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = a
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (self.a - x) / (1 - t.reshape(-1, 1)) + 0 * self.dummy


def test_log_prob_exact_divergence_matches_the_affine_change_of_variables():
    model = Affine()
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lp = log_prob(model, x, rtol=1e-10, atol=1e-10)
    assert torch.allclose(lp, model.closed_form(x), atol=1e-6, rtol=0)
    # Gradients by the adjoint agree with backpropagation through the solver.
    lp.sum().backward()
    g_adjoint = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    log_prob(model, x, rtol=1e-10, atol=1e-10, adjoint=False).sum().backward()
    for ga, p in zip(g_adjoint, model.parameters()):
        assert torch.allclose(ga, p.grad, atol=1e-6)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased(noise):
    torch.manual_seed(1)
    model = Affine(torch.tensor([[0.3, -0.9], [1.1, -0.2]], dtype=torch.float64))
    x = torch.tensor([[0.5, -0.3]], dtype=torch.float64).expand(4000, 2).contiguous()  # 4000 probes of one point
    est = log_prob(model, x, divergence="hutchinson", noise=noise, rtol=1e-8, atol=1e-8)
    exact = model.closed_form(x[:1])[0]
    se = est.std() / math.sqrt(len(est))
    assert se > 0  # the probes do vary (an off-diagonal Jacobian)
    assert abs(est.mean() - exact) < 3 * se


@pytest.mark.parametrize("path", ["linear", "vp"])
def test_paths_join_noise_to_data_with_their_velocity(path):
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    for t, end in ((0.0, x0), (1.0, x1)):
        xt, _ = path_point(path, x0, x1, torch.full((5,), t, dtype=torch.float64))
        assert torch.allclose(xt, end, atol=1e-12)
    t, h = torch.rand(5, generator=g, dtype=torch.float64) * 0.8 + 0.1, 1e-6
    _, ut = path_point(path, x0, x1, t)
    fd = (path_point(path, x0, x1, t + h)[0] - path_point(path, x0, x1, t - h)[0]) / (2 * h)
    assert torch.allclose(ut, fd, atol=1e-7)


def test_ot_pairing_is_the_optimal_permutation():
    g = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    perm = ot_pairing(x0, x1)
    cost = ((x0[perm] - x1) ** 2).sum().item()
    best = min(((x0[list(p)] - x1) ** 2).sum().item() for p in itertools.permutations(range(6)))
    assert cost == pytest.approx(best, rel=1e-6)
    # W2 between a point set and its translate is the translation's length.
    c = torch.tensor([0.3, -0.4])
    assert wasserstein2(x0, x0 + c) == pytest.approx(0.5, rel=1e-6)


@pytest.mark.parametrize("coupling", ["independent", "ot"])
def test_cfm_loss_vanishes_for_the_exact_velocity(coupling):
    a = torch.tensor([1.5, -0.5])
    x1 = a.expand(64, 2).clone()  # a single data point: its marginal velocity is known
    g = torch.Generator().manual_seed(0)
    assert cfm_loss(TowardsPoint(a), x1, coupling=coupling, generator=g).item() < 1e-10
    assert cfm_loss(TowardsPoint(a + 1), x1, coupling=coupling, generator=g).item() > 0.1


def test_sample_counts_evaluations_and_matches_the_closed_form_flow():
    model = Affine()
    x0 = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    e = torch.linalg.matrix_exp(A)
    exact = x0 @ e.T + torch.linalg.solve(A, (e - torch.eye(2, dtype=torch.float64)) @ B)
    for method, per_step in (("euler", 1), ("midpoint", 2), ("rk4", 4)):
        result = sample(model, x0=x0, method=method, steps=10)
        assert result.nfe == 10 * per_step and result.seconds > 0
    assert torch.allclose(sample(model, x0=x0, method="rk4", steps=50).x, exact, atol=1e-7)
    adaptive = sample(model, x0=x0, rtol=1e-10, atol=1e-10, times=[0.0, 0.5, 1.0])
    assert torch.allclose(adaptive.x, exact, atol=1e-8) and adaptive.trajectory.shape == (3, 8, 2)
    # reflow pairs are the flow's own image of their noise
    x0r, x1r = reflow_pairs(model, 5, rtol=1e-10, atol=1e-10, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(sample(model, x0=x0r, rtol=1e-10, atol=1e-10).x, x1r)


def test_guidance_mixes_conditional_and_unconditional_velocities():
    class Labelled(nn.Module):
        data_shape = (1,)

        def __init__(self) -> None:
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, t, x, labels):  # v = label (no label: -1 -> 0)
            return labels.clamp(min=0).to(x.dtype).unsqueeze(1) + 0 * x + self.p

    labels = torch.tensor([2, 3])
    x0 = torch.zeros(2, 1)
    for w in (0.0, 1.0, 2.5):
        x = sample(Labelled(), x0=x0, labels=labels, guidance=w, method="euler", steps=1).x
        assert torch.allclose(x[:, 0], w * labels.float())


def test_velocity_networks_take_solver_and_training_times():
    mlp = VelocityMLP(3, (16, 16), num_classes=4)
    x = torch.randn(5, 3)
    assert mlp(torch.tensor(0.3), x).shape == (5, 3)
    assert mlp(torch.rand(5), x, torch.tensor([0, 1, -1, 3, 2])).shape == (5, 3)
    unet = UNetVelocity((1, 8, 8), channels=8, num_classes=10)
    img = torch.randn(3, 1, 8, 8)
    assert unet(torch.rand(3), img, torch.tensor([1, -1, 9])).shape == img.shape
    assert unet(torch.tensor(0.5), img).shape == img.shape
    with pytest.raises(
        ValueError, match=r"data_shape must be \(C, H, W\) with H and W divisible by 4; got \(1, 6, 6\)"
    ):
        UNetVelocity((1, 6, 6))


def test_velocity_mlp_time_features_and_activation():
    x, t = torch.randn(4, 2), torch.rand(4)
    plain, fourier = VelocityMLP(2, (8,)), VelocityMLP(2, (8,), time_features=3, activation="silu")
    assert plain.hidden[0].in_features == 3 and fourier.hidden[0].in_features == 3 + 6  # x, t (+ sin/cos of t)
    assert plain(t, x).shape == fourier(t, x).shape == (4, 2)
    # tanh hidden units are bounded by 1: the output is at most |W_out| |h|_1 + |b| in size.
    bound = plain.out.weight.abs().sum(1) + plain.out.bias.abs()
    assert (plain(t, 1e3 * x).abs() <= bound + 1e-5).all()
    with pytest.raises(ValueError, match=r"activation must be one of tanh, silu; got 'relu'"):
        VelocityMLP(2, activation="relu")
    with pytest.raises(ValueError, match=r"time_features must be a non-negative integer \(0: t alone\); got -1"):
        VelocityMLP(2, time_features=-1)


def test_bits_per_dim_of_the_uniform_density_is_log2_of_the_levels():
    d = 64
    assert bits_per_dim(d * math.log(2), d, 256) == pytest.approx(8.0)
    assert bits_per_dim(d * math.log(2), d, 17) == pytest.approx(math.log2(17))


def test_digits_split_and_missing_scikit_learn(monkeypatch):
    from neuralode.datasets.digits import _all_digits, load_digits

    x, y = load_digits(train=False)
    assert x.shape == (300, 1, 8, 8) and x.dtype == torch.uint8 and int(x.max()) == 16 and y.shape == (300,)
    assert load_digits()[0].shape == (1497, 1, 8, 8)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    _all_digits.cache_clear()
    with pytest.raises(ImportError, match=r"install it with: pip install 'neuralode\[digits\]'"):
        load_digits()
    _all_digits.cache_clear()  # the next caller reads the real data again


# --------------------------------------------------------------------------------------------
# Errors at the boundary.


class WrongShape(nn.Module):
    data_shape = (2,)

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 3)

    def forward(self, t, x):
        return self.lin(x)  # (batch, 3) for x (batch, 2)


def test_a_velocity_of_the_wrong_shape_is_named():
    msg = r"the velocity field WrongShape returned \(4, 3\) for x of shape \(4, 2\); v\(t, x\) must return a tensor shaped like x"
    with pytest.raises(ValueError, match=msg):
        cfm_loss(WrongShape(), torch.randn(4, 2))
    with pytest.raises(ValueError, match=msg):
        sample(WrongShape(), 4, method="euler", steps=2)
    with pytest.raises(ValueError, match=msg):
        log_prob(WrongShape(), torch.randn(4, 2))


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(8, 2)
    model = VelocityMLP(2, (8,))
    with pytest.raises(ValueError, match=r"coupling must be one of independent, ot; got 'sinkhorn'"):
        cfm_loss(model, x, coupling="sinkhorn")
    with pytest.raises(ValueError, match=r"path must be one of linear, vp; got 'cosine'"):
        cfm_loss(model, x, path="cosine")
    with pytest.raises(
        ValueError,
        match=r"the OT coupling needs at least 2 noise and 2 data samples per batch, as many of each; "
        r"got 1 and 1\. Raise the batch size",
    ):
        cfm_loss(model, x[:1], coupling="ot")
    bad = x.clone()
    bad[5, 1] = float("nan")
    with pytest.raises(
        ValueError, match=r"x1 holds NaN or infinite values \(1 of 8 rows, first at row 5\); remove or impute"
    ):
        cfm_loss(model, bad)
    with pytest.raises(ValueError, match=r"x holds NaN or infinite values \(1 of 8 rows, first at row 5\)"):
        log_prob(model, bad)
    with pytest.raises(ValueError, match=r"divergence must be one of exact, hutchinson; got 'trace'"):
        log_prob(model, x, divergence="trace")
    with pytest.raises(ValueError, match=r"steps=10 applies to fixed-step methods; 'dopri5' chooses its own steps"):
        sample(model, 4, steps=10)
    with pytest.raises(ValueError, match=r"method 'rk4' takes fixed steps: pass steps=N"):
        sample(model, 4, method="rk4")
    with pytest.raises(ValueError, match=r"n must be a positive integer when x0 is not given; got 0"):
        sample(model, 0)


def test_sample_runs_on_every_registered_method():
    from neuralode.models.flow_matching import _is_adaptive
    from neuralode.solvers.api import method_names

    model = Affine()
    x0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    e = torch.linalg.matrix_exp(A)
    exact = x0 @ e.T + torch.linalg.solve(A, (e - torch.eye(2, dtype=torch.float64)) @ B)
    for method in method_names():
        kw = {"rtol": 1e-6, "atol": 1e-6} if _is_adaptive(method) else {"steps": 40}
        result = sample(model, x0=x0, method=method, **kw)
        assert result.nfe > 0, method
        assert torch.allclose(result.x, exact, atol=5e-2), method  # euler at 40 steps is the loosest


@pytest.mark.parametrize("activation", ["tanh", "silu"])
def test_velocity_mlp_divergence_equals_the_autograd_jacobian_trace(activation):
    # The forward-mode divergence against the trace of the Jacobian autograd builds row by row,
    # with the Fourier features of t and a label embedding in the first layer.
    torch.manual_seed(0)
    model = VelocityMLP(3, (8, 8), num_classes=2, time_features=2, activation=activation).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    t, labels = torch.tensor(0.4, dtype=torch.float64), torch.tensor([0, 1, -1, 0, 1])
    v, div = model.velocity_and_divergence(t, x, labels)
    v_ref = model(t, x, labels)
    rows = [torch.autograd.grad(v_ref[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(3)]
    assert torch.allclose(v, v_ref, atol=1e-14, rtol=0)
    assert torch.allclose(div, sum(rows), atol=1e-12, rtol=0)
    # And it is differentiable in the parameters: d(div)/dθ against finite differences of one weight.
    w = model.hidden[1].weight
    (g,) = torch.autograd.grad(div.sum(), w)
    h = 1e-6
    with torch.no_grad():
        w[2, 3] += h
        up = model.velocity_and_divergence(t, x, labels)[1].sum()
        w[2, 3] -= 2 * h
        down = model.velocity_and_divergence(t, x, labels)[1].sum()
        w[2, 3] += h
    assert abs(g[2, 3].item() - (up - down).item() / (2 * h)) < 1e-7


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_log_prob_of_a_velocity_mlp_matches_the_vjp_divergence(guidance):
    # log_prob of a VelocityMLP takes the divergence from the network's forward pass; a subclass that
    # only wraps forward takes the general route (one VJP per dimension). Same field: same numbers
    # and gradients, to rounding.
    class Wrapped(VelocityMLP):
        def forward(self, t, x, labels=None):
            return super().forward(t, x, labels)

    torch.manual_seed(1)
    fast = VelocityMLP(2, (16, 16), num_classes=3).double()
    slow = Wrapped(2, (16, 16), num_classes=3).double()
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(6, 2, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, -1, 0, 1])
    results = []
    for model in (fast, slow):
        lp, nfe = log_prob(model, x, labels=labels, guidance=guidance, rtol=1e-9, atol=1e-9, return_nfe=True)
        lp.sum().backward()
        results.append((lp.detach(), nfe, [p.grad.clone() for p in model.parameters()]))
    (lp_f, nfe_f, g_f), (lp_s, nfe_s, g_s) = results
    assert nfe_f == nfe_s > 0
    assert torch.allclose(lp_f, lp_s, atol=1e-12, rtol=0)
    for a, b in zip(g_f, g_s):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-9)


def test_log_prob_takes_fixed_steps():
    # Midpoint is second order: its error on the affine flow falls 4x when the steps double.
    model = Affine()
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    exact = model.closed_form(x)
    with torch.no_grad():
        err = [(log_prob(model, x, method="midpoint", steps=n) - exact).abs().max().item() for n in (8, 16)]
    assert 3.5 < err[0] / err[1] < 4.5 and err[1] < 1e-3
    with pytest.raises(ValueError, match=r"method 'midpoint' takes fixed steps: pass steps=N"):
        log_prob(model, x, method="midpoint")
    with pytest.raises(ValueError, match=r"steps=4 applies to fixed-step methods; 'dopri5' chooses its own"):
        log_prob(model, x, steps=4)
