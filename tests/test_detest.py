"""The DETEST problem set in benchmarks/detest.py: definitions, torch/numpy agreement, reference solutions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks.detest import PROBLEMS, DetestProblem, detest_names, reference_solution

NAMES = detest_names()
T_GRID = np.linspace(0.0, 20.0, 81)

# State at t = 20 in Enright & Pryce's Toronto non-stiff test set (ACM TOMS Algorithm 648), which
# carries the 1972 DETEST problems over unchanged: an independent check of every definition here.
# C4 lists its first 10 of 51 components. The published B3 y1 and C2 y1..y9 (all ~2.06e-9) are
# accurate only to ~1e-16 absolute, which the absolute tolerance below allows for.
TORONTO_END_VALUES = {
    "A1": [math.exp(-20.0)],
    "A2": [0.2182178902359887],
    "A3": [math.exp(math.sin(20.0))],
    "A4": [17.73016648131483],
    "A5": [-0.7887826688964196],
    "B1": [0.6761876008576667, 0.1860816099640036],
    "B2": [1.000000001030576, 1.0, 0.9999999989694235],
    "B3": [2.061153488557776e-09, 5.257228022048349e-02, 0.9474277177183630],
    "B4": [0.9826950928005993, 2.198447081694832, 0.9129452507276399],
    "B5": [-0.9396570798729192, -0.3421177754000779, 0.7414126596199957],
    "C1": [2.061153622240064e-09, 4.122307244619555e-08, 4.122307244716968e-07, 2.748204829855288e-06,
           1.374102414941961e-05, 5.496409659803266e-05, 1.832136553274552e-04, 5.234675866508716e-04,
           1.308668966628220e-03, 9.979127409508656e-01],
    "C2": [2.061153577984930e-09, 2.061153573736588e-09, 2.061153569488245e-09, 2.061153565239902e-09,
           2.061153560991560e-09, 2.061153556743217e-09, 2.061153552494874e-09, 2.061153548246532e-09,
           2.061153543998189e-09, 9.999999814496180e-01],
    "C3": [2.948119211022058e-03, 5.635380154844266e-03, 7.829072515926013e-03, 9.348257908594937e-03,
           1.007943610301970e-02, 9.982674171429909e-03, 9.088693332766085e-03, 7.489115195185912e-03,
           5.322964130953349e-03, 2.762434379029886e-03],
    "C4": [3.124111453721466e-03, 6.015416842150318e-03, 8.470021834842650e-03, 1.033682931733337e-02,
           1.153249572873923e-02, 1.204549525737964e-02, 1.192957068015293e-02, 1.128883207111195e-02,
           1.025804501391024e-02, 8.982017581934167e-03],
    "C5": [-4.792730224323733, -2.420550725448973, -9.212509306014886e-01,
           -4.217310404035213, 7.356202947498970, 3.223785985421212,
           4.035559443262270, 1.719865528670555e01, 7.478910794233703,
           -2.998759326324844e01, -4.107310937550929, -9.277008321754407e-01,
           -2.442125302518482e01, 2.381459045746554e01, 1.492096306951359e01,
           3.499208963063806e-01, -5.748487687912825e-01, -2.551694020879149e-01,
           -5.237040978903326e-01, -2.493000463579661e-01, -8.045341642044464e-02,
           -3.875289237334110e-01, 5.648603288767891e-02, 3.023606472143342e-02,
           4.133856546712445e-02, -2.862393029841379e-01, -1.183032405136207e-01,
           -1.511986457359206e-01, -2.460068894318766e-01, -3.189687411323877e-02],
    "D1": [2.198835352008397e-01, 9.427076846341813e-01, -9.787659841058176e-01, 3.287977990962036e-01],
    "D2": [-1.777027357140412e-01, 9.467784719905892e-01, -1.030294163192969, 1.211074890053952e-01],
    "D3": [-5.780432953035361e-01, 8.633840009194193e-01, -9.595083730380727e-01, -6.504915126712089e-02],
    "D4": [-9.538990293416394e-01, 6.907409024219432e-01, -8.212674270877433e-01, -1.539574259125825e-01],
    "D5": [-1.295266250987574, 4.003938963792321e-01, -6.775390924707566e-01, -1.270838154278686e-01],
    "E1": [1.456723600728308e-01, -9.883500195574063e-02],
    "E2": [2.008149762174948, -4.250887527320057e-02],
    "E3": [-1.004178858647128e-01, 2.411400132095954e-01],
    "E4": [3.395091444646555e01, 2.767822659672869e-01],
    "E5": [1.411797390542629e01, 2.400000000000002],
}  # fmt: skip


def _random_state(problem: DetestProblem, seed: int) -> tuple[float, np.ndarray]:
    """A time in [0, 20] and a state near y0, away from each problem's singularities."""
    rng = np.random.default_rng(seed)
    y0 = np.asarray(problem.y0)
    return float(rng.uniform(0.0, problem.t_end)), y0 + 0.05 * (1.0 + np.abs(y0)) * rng.standard_normal(y0.shape)


def test_names_in_class_order():
    assert NAMES == [c + i for c in "ABCDE" for i in "12345"]
    assert list(PROBLEMS) == NAMES
    assert all(PROBLEMS[n].name == n and PROBLEMS[n].t_end == 20.0 for n in NAMES)
    dims = {n: PROBLEMS[n].dim for n in NAMES}
    assert [dims[n] for n in ("A1", "B1", "B2", "C1", "C4", "C5", "D1", "E1")] == [1, 2, 3, 10, 51, 30, 4, 2]


@pytest.mark.parametrize("name", NAMES)
def test_torch_and_numpy_rhs_agree(name):
    problem = PROBLEMS[name]
    for seed in range(3):
        t, y = _random_state(problem, seed)
        expected = problem.rhs_numpy(t, y)
        got = problem.rhs(torch.tensor(t, dtype=torch.float64), torch.from_numpy(y))
        assert expected.shape == (problem.dim,)
        assert got.shape == (problem.dim,) and got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-13, atol=1e-13)

    # The initial state and its derivative have matching shapes, in both backends.
    y0 = problem.y0_tensor()
    assert y0.shape == (problem.dim,)
    assert problem.rhs(torch.tensor(0.0, dtype=torch.float64), y0).shape == y0.shape
    assert problem.rhs_numpy(0.0, np.asarray(problem.y0)).shape == (problem.dim,)


@pytest.mark.parametrize("name", NAMES)
def test_torch_rhs_batches_and_keeps_float32(name):
    problem = PROBLEMS[name]
    t, _ = _random_state(problem, 0)
    ys = np.stack([_random_state(problem, seed)[1] for seed in range(3)])  # (3, n)
    batched = problem.rhs(torch.tensor(t, dtype=torch.float64), torch.from_numpy(ys))
    assert batched.shape == ys.shape
    for row in range(3):
        np.testing.assert_allclose(batched[row].numpy(), problem.rhs_numpy(t, ys[row]), rtol=1e-13, atol=1e-13)

    # float32 states stay float32 even when t is a float64 tensor (as solvers carry it).
    out32 = problem.rhs(torch.tensor(t, dtype=torch.float64), torch.from_numpy(ys[0]).float())
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.double().numpy(), problem.rhs_numpy(t, ys[0]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_reference_matches_toronto_end_values(name):
    expected = np.asarray(TORONTO_END_VALUES[name])
    end = reference_solution(PROBLEMS[name], np.array([0.0, 20.0]))[-1]
    np.testing.assert_allclose(end[: expected.size], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "name, exact",
    [
        ("A1", lambda t: np.exp(-t)),
        ("A2", lambda t: 1.0 / np.sqrt(1.0 + t)),
        ("A3", lambda t: np.exp(np.sin(t))),
        ("A4", lambda t: 20.0 / (1.0 + 19.0 * np.exp(-t / 4.0))),
        ("E1", lambda t: np.sqrt(2.0 / (np.pi * (t + 1.0))) * np.sin(t + 1.0)),
    ],
)
def test_reference_matches_closed_forms(name, exact):
    ref = reference_solution(PROBLEMS[name], T_GRID)
    np.testing.assert_allclose(ref[:, 0], exact(T_GRID), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", ["D1", "D2", "D3", "D4", "D5"])
def test_orbit_reference_conserves_energy_and_angular_momentum(name):
    ref = reference_solution(name, T_GRID)
    x, y, vx, vy = ref.T
    energy = 0.5 * (vx**2 + vy**2) - 1.0 / np.hypot(x, y)
    angular_momentum = x * vy - y * vx
    e = float(name[1]) * 0.2 - 0.1
    # Semi-major axis 1: energy -1/2 and angular momentum sqrt(1 - e^2) for every eccentricity.
    np.testing.assert_allclose(energy, -0.5, rtol=0, atol=1e-9)
    np.testing.assert_allclose(angular_momentum, math.sqrt(1.0 - e * e), rtol=0, atol=1e-9)


def test_reference_solution_is_cached_read_only_and_checked():
    t = np.array([0.0, 5.0, 20.0])
    first = reference_solution(PROBLEMS["B1"], t)
    assert first.shape == (3, 2)
    assert reference_solution("B1", t.copy()) is first
    assert not first.flags.writeable
    np.testing.assert_array_equal(first[0], PROBLEMS["B1"].y0)
    np.testing.assert_array_equal(reference_solution("A1", np.array([0.0])), [[1.0]])
    with pytest.raises(ValueError, match="non-decreasing within"):
        reference_solution("A1", np.array([0.0, 30.0]))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        reference_solution("A1", np.zeros((2, 2)))
