"""The flow task: velocity fields trained by (conditional) flow matching, scored by exact likelihood.

``train_flow(FlowTrainConfig(dataset="8gaussians", coupling="ot", out="runs/flow"))`` trains into a
run folder (:mod:`neuralode.training.rundir`) with the machinery every task shares: progress bar,
``metrics.jsonl`` (a line every ``log_every`` iterations: ``iteration``, ``loss``, ``lr``,
``seconds``), atomic checkpoints, exact resume, the lock, data parallel under ``torchrun`` and
``--device``. At the end one ``"final": true`` line holds ``test_nll`` (nats, held-out data, the
flow's likelihood by :func:`~neuralode.models.flow_matching.log_prob`), ``test_bpd`` for images, and
``sampling``: a table of samples per NFE (method, steps, NFE, wall time, 2-Wasserstein distance to
held-out data). Figures: ``samples.png`` (model beside data), ``trajectories.png`` (a few particles
from noise to data) and ``quality_vs_nfe.png``.

**Objective** (:func:`~neuralode.models.flow_matching.cfm_loss`): the ``path`` (linear or variance
preserving), the ``coupling`` (independent or minibatch OT) and ``sigma``. Adam with the learning
rate cosine-decayed to 0 over ``iterations``, as in the CNF task.

**Weight average** (``ema``, :class:`WeightEMA`): the evaluation, the samples, the figures and a
reflow's teacher use an exponential moving average of the weights, as flow-matching and diffusion
models are commonly evaluated (torchcfm's examples, Ho et al. 2020; Polyak & Juditsky 1992 for the
averaging of stochastic-gradient iterates). The regression target ``u_t`` of one pair is a noisy
estimate of the marginal velocity, so the iterates wander about the minimiser; their average sits
closer to it. The checkpoint holds both the trained weights (``model``) and the average (``ema``),
and a resumed run continues both exactly. Off by default (``ema=0``): an average replaces the decay
of the learning rate (torchcfm pairs ``β = 0.999`` with a constant rate), and with the default cosine
decay to 0 the last iterate is already averaged over its final low-rate steps, while a window of
about ``1 / (1 − β)`` steps reaches back to higher rates: on 8 gaussians ``β = 0.999`` on top of the
cosine schedule does not lower the test NLL (``benchmarks/results/flows.md``, "Weight average").

**Defaults for 2-D data**, chosen on 8 gaussians against the max-likelihood CNF (the ablation and
the fine-tune sections of ``benchmarks/results/flows.md``): the CNF's state size (a 64-64-64 tanh
MLP taking ``t`` as an input, no sinusoidal features of ``t``: those made the fitted field oscillate
in ``t`` and cost about 0.2 nats of test NLL), Adam at 3e-3 cosine-decayed; with the OT
coupling, batch 128 (the OT assignment costs O(n³): a step at 256 costs about four times one at
128 and trains no better), 500 iterations of flow matching and then 1800 of the maximum-likelihood fine-tune below.
``iterations``, ``batch_size`` and ``mle_finetune`` default to ``None``, resolved in
``__post_init__``: flow matching alone (2500 iterations at batch 256, no fine-tune) on images, with
the independent coupling (its curved paths are what 4 midpoint steps integrate badly: the default
fine-tune took I-CFM on 8 gaussians to a test NLL of 11.4), with a weight average, a reflow or
``mle_finetune=0``; an explicit ``mle_finetune`` on 2-D data keeps the short schedule. On 8
gaussians the OT run scores 2.8459, 2.8645 and 2.8380 nats on the held-out points of seeds 0, 1
and 2, where CNFs trained at their defaults with the same seeds score 2.8483, 2.8662 and 2.8399,
in 1/5.4 to 1/6.2 of the CNF's training time (two timings of the steps alternated in one
process: ``benchmarks/results/flows.md``, "Training cost" and the fine-tune notes). Flow matching alone (2500 iterations) stays
about 0.014 nats above the CNF however long, wide or averaged the run.

**Maximum-likelihood fine-tune** (``mle_finetune=N``, ``--mle-finetune N``): the flow-matching loss
is a regression onto conditional velocities, not the likelihood the test NLL scores. After the
``iterations`` of flow matching the run takes ``N`` more on the same field whose loss is the mean of
``−log p_1(x)`` over the batch by :func:`~neuralode.models.flow_matching.log_prob` (exact divergence,
gradients by backpropagation through the solver, or by the adjoint with ``mle_adjoint``) plus
``mle_fm_weight`` times the flow-matching loss of the same batch, Adam restarted with fresh moment
estimates at ``mle_lr`` cosine-decayed to 0 over the ``N`` iterations, the batches drawn as the
flow-matching ones are. Its iterations are numbered after the flow-matching ones
(``iterations + 1`` …), its ``metrics.jsonl`` lines carry ``"phase": "mle"``, ``nll`` (the training
batches' mean negative log-likelihood, nats, without the flow-matching term) and ``nfe_forward``, its
checkpoints resume exactly inside the phase, and the training ``seconds`` count both phases. It is
refused with a weight average (``ema > 0``: the average would reach back over the flow-matching
iterates) and with a reflow (whose straightened paths it would bend).

The likelihood is solved by ``mle_method`` with ``mle_steps`` equal steps (default: 4 midpoint
steps, 8 evaluations), or by dopri5 at ``mle_tol`` (``mle_method="dopri5"``: about 20 evaluations at
1e-3, a step about 2.5 times dearer). A fixed-step likelihood is not the flow's own: nothing bounds
its error, and a fine-tune on it alone learns to grow that error in its favour. On 8 gaussians 4
midpoint steps put the flow-matching field's NLL 0.012 nats low; 2500 fine-tune iterations on the
likelihood alone (seed 2) ended 0.13 nats low, the test NLL rising to 2.859 where 2000 had given
2.843, and rk4 at 2 steps diverged (8.7 nats). The flow-matching term (``mle_fm_weight=1``) keeps
the field near its regression target, where the 4-step rule is accurate: the same 2500 iterations
with it gave 2.842, and it is what lets the cheap solver take the 1800 iterations of the default,
which dopri5 at 1e-3 could not within 1/5 of the CNF's time (800 of them gave 2.8482, 2.8705 and
2.8429 on seeds 0, 1 and 2).

**Data.** Toy densities are drawn on the fly (:mod:`neuralode.datasets.toy2d`); ``digits``
(scikit-learn's 8x8, 17 levels) and ``mnist`` (28x28, 256 levels) are dequantised uniformly and
scaled to ``[-1, 1]`` (see :mod:`neuralode.models.flow_matching`), with minibatches drawn with
replacement. Every draw of iteration ``i`` (minibatch, dequantisation, noise ``x0``, times, label
dropout) comes from :func:`~neuralode.training.seeding.step_generator` ``(seed, i)`` over the
*global* batch, each rank then taking its rows, so a resumed run retraces an uninterrupted one and
``W`` processes see the single process's draws. The OT coupling pairs each rank's own rows, so
under data parallel its pairs (and numbers) differ slightly from one process's.

**Reflow** (``reflow_from=RUN_DIR``, Liu et al. 2023): the trained flow in ``RUN_DIR`` (same
dataset and architecture) maps ``reflow_pairs`` noise draws to samples with dopri5 at ``tol``; the
new field starts from the weights that flow is evaluated with (its moving average, when it kept
one) and is trained on those fixed pairs (linear path, pairs as drawn: ``coupling="independent"``),
which straightens its paths. The pairs are a function of the seed, made again on resume.

**Class-conditional fields** (``conditional=True``, labelled data only): the label is replaced by
"none" with probability ``label_dropout`` during training (classifier-free guidance), and the
evaluation samples with ``guidance`` ``w`` on the test labels (1: the plain conditional field).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..datasets.toy2d import TOY_DATASETS, sample_toy
from ..models.cnf import NOISE_TYPES
from ..models.flow_matching import (
    COUPLINGS,
    DIVERGENCES,
    MLP_ACTIVATIONS,
    PATHS,
    UNetVelocity,
    VelocityMLP,
    bits_per_dim,
    cfm_loss,
    log_prob,
    reflow_pairs,
    sample,
    wasserstein2,
)
from ..progress import progress_bar
from .checkpoints import load_checkpoint
from .cnf import cosine_lr
from .config import ConfigError, RunConfig, setting
from .distributed import Dist, Sums, resume_hint
from .rundir import CHECKPOINT_NAME, RunDir, iteration_state, restore_iteration_state, run_task
from .seeding import step_generator
from .signals import StopFlag

__all__ = [
    "FIGURE_NAMES",
    "FLOW_DATASETS",
    "FlowData",
    "FlowTrainConfig",
    "WeightEMA",
    "build_model",
    "evaluate",
    "evaluate_nll",
    "evaluation_weights",
    "load_flow_checkpoint",
    "plot_saved_run",
    "sampling_table",
    "train_flow",
    "w2_floor",
    "write_figures",
]

IMAGE_DATASETS = ("digits", "mnist")
FLOW_DATASETS = (*TOY_DATASETS, *IMAGE_DATASETS)
FIGURE_NAMES = ("samples.png", "trajectories.png", "quality_vs_nfe.png")
#: The fixed-step methods of the sampling table (each at every ``table_steps``); dopri5 follows at ``table_tolerances``.
TABLE_METHODS = ("euler", "midpoint", "rk4")
_FIGURES = ("loss", "n")
#: The figures of a fine-tune interval: the mean NLL (nats) of the training batches and the forward NFE.
_MLE_FIGURES = ("nll", "nfe_forward", "n")
#: Fine-tune defaults: Adam's initial rate and the tolerance of its solves, the best of those measured on
#: 8 gaussians (a constant rate of 1e-3 raised the NLL; cosine decays from 1e-3 to 3e-3 came out within
#: 0.001 nats of each other, 2e-3 ahead at batch 128; dopri5 at 1e-3 gained more per second than at 1e-2).
MLE_LR = 2e-3
MLE_TOL = 1e-3
#: Solvers of the fine-tune's likelihood: adaptive dopri5, or a fixed-step method (``mle_steps`` steps).
MLE_METHODS = ("dopri5", "midpoint", "rk4", "euler")


@dataclass(frozen=True)
class FlowTrainConfig(RunConfig):
    """A flow-matching run. The shared fields (``out``, ``seed``, ``log_every``, ...) are :class:`RunConfig`'s.

    Attributes:
        dataset: a toy 2-D density, ``digits`` or ``mnist``.
        coupling: ``"independent"`` or ``"ot"`` (minibatch optimal transport).
        path: ``"linear"`` (rectified flow) or ``"vp"`` (variance preserving).
        sigma: Gaussian width around the conditional path (0: none).
        iterations: flow-matching steps (a resumed run may raise it); ``None``: 500 on 2-D data
            with a fine-tune, else 2500 (the module docstring, "Defaults for 2-D data").
        batch_size: samples per step over all processes (the OT coupling needs 2 per process);
            ``None``: 128 on 2-D data with a fine-tune, else 256.
        lr: Adam's initial rate, cosine-decayed to 0 over ``iterations``.
        ema: decay ``β`` of the exponential moving average of the weights that is evaluated and
            sampled (:class:`WeightEMA`); 0: the trained weights themselves.
        hidden_dims: widths of the MLP velocity field (2-D data).
        activation: the MLP's activation, ``"tanh"`` or ``"silu"``.
        time_features: sinusoidal features of ``t`` fed to the MLP besides ``t`` itself (0: none).
        channels: top-level channels of the U-Net velocity field (images).
        conditional: a class-conditional field (images only: they have labels).
        label_dropout: probability of training a conditional field on "no label".
        guidance: classifier-free guidance weight used by the evaluation's samples.
        tol: rtol = atol of dopri5 for the test likelihood and the default samples.
        divergence: ``"exact"``, ``"hutchinson"`` or ``"auto"`` (exact up to 16 dimensions).
        noise: Hutchinson's probe distribution.
        test_samples: held-out points for the test NLL (toy: fresh draws; images: the first of the
            test split).
        table_samples: samples per row of the sampling table (W2 against as many held-out points).
        table_steps: step counts of the fixed-step rows of the sampling table.
        table_tolerances: tolerances of its dopri5 rows.
        data_dir: an MNIST folder (``None``: download into the cache).
        reflow_from: a trained flow run whose noise-sample pairs this run trains on (reflow).
        reflow_pairs: how many pairs.
        mle_finetune: iterations of maximum-likelihood fine-tune after the ``iterations`` of flow
            matching (0: none; see the module docstring); ``None``: 1800 with the OT coupling on
            2-D data without a weight average or a reflow, else 0.
        mle_lr: Adam's initial rate in the fine-tune, cosine-decayed to 0 over its iterations.
        mle_method: the solver of the fine-tune's likelihood: ``"dopri5"`` at ``mle_tol``, or
            ``"midpoint"``, ``"rk4"``, ``"euler"`` with ``mle_steps`` equal steps.
        mle_steps: steps of a fixed-step ``mle_method``.
        mle_tol: rtol = atol of dopri5 in the fine-tune's likelihood solves.
        mle_fm_weight: weight ``λ`` of the flow-matching loss in the fine-tune's objective
            ``−mean log p + λ · cfm_loss`` (0: the likelihood alone).
        mle_adjoint: fine-tune gradients by the adjoint method instead of backpropagation through
            the solver.
        threads: ``torch.set_num_threads`` for the run (``None``: leave it).
    """

    KIND = "flow"
    RESUME_KEEP = (
        "dataset",
        "coupling",
        "path",
        "sigma",
        "hidden_dims",
        "activation",
        "time_features",
        "channels",
        "conditional",
        "label_dropout",
        "seed",
        "batch_size",
        "reflow_from",
        "reflow_pairs",
    )

    out: Path = setting(Path("runs/flow"), "the run folder", metavar="RUN_DIR")
    dataset: str = setting("8gaussians", "the data", choices=FLOW_DATASETS)
    coupling: str = setting("ot", "how noise is paired with data in a batch", choices=COUPLINGS)
    path: str = setting("linear", "probability path: linear (rectified flow) or variance preserving", choices=PATHS)
    sigma: float = setting(0.0, "Gaussian width around the conditional path", metavar="S")
    iterations: int = setting(  # None: resolved in __post_init__
        None,
        "flow-matching iterations (default: 500 on 2-D data with a fine-tune, else 2500; raise it on --resume "
        "to train longer)",
        metavar="N",
    )
    batch_size: int = setting(  # None: resolved in __post_init__
        None,
        "samples per iteration, over all processes (default: 128 on 2-D data with a fine-tune, else 256)",
        metavar="N",
    )
    lr: float = setting(3e-3, "Adam learning rate, cosine-decayed to 0 over --iterations")
    ema: float = setting(
        0.0,
        "decay of the moving average of the weights used for evaluation and sampling, e.g. 0.999 "
        "with a long run or a constant rate (0: none, the trained weights)",
        metavar="DECAY",
    )
    hidden_dims: tuple[int, ...] = setting(
        (64, 64, 64), "hidden widths of the MLP velocity field (2-D data)", metavar="W"
    )
    activation: str = setting("tanh", "activation of the MLP velocity field", choices=MLP_ACTIVATIONS)
    time_features: int = setting(0, "sinusoidal features of t fed to the MLP besides t (0: t alone)", metavar="N")
    channels: int = setting(32, "top-level channels of the U-Net velocity field (images)", metavar="C")
    conditional: bool = setting(False, "class-conditional velocity field (labelled data: digits, mnist)")
    label_dropout: float = setting(
        0.1, "probability of dropping the label in training (classifier-free guidance)", metavar="P"
    )
    guidance: float = setting(1.0, "guidance weight of the evaluation's conditional samples (1: unguided)", metavar="W")
    tol: float = setting(1e-5, "dopri5 rtol = atol for the test likelihood")
    divergence: str = setting(
        "auto",
        "divergence of the likelihood: exact, hutchinson, or auto (exact up to 16 dims)",
        choices=("auto", *DIVERGENCES),
    )
    noise: str = setting("rademacher", "Hutchinson probe", choices=NOISE_TYPES)
    test_samples: int = setting(10000, "held-out samples for the test NLL", metavar="N")
    table_samples: int = setting(500, "samples per row of the samples-per-NFE table", metavar="N")
    table_steps: tuple[int, ...] = setting(
        (1, 2, 5, 10, 20, 100), "step counts of the table's fixed-step rows", metavar="N"
    )
    table_tolerances: tuple[float, ...] = setting(
        (1e-2, 1e-3, 1e-5), "rtol = atol of the table's dopri5 rows", metavar="TOL"
    )
    data_dir: Path | None = setting(None, "MNIST folder (default: download into the cache)", metavar="DIR")
    reflow_from: Path | None = setting(
        None, "reflow: train on noise-sample pairs of the flow in this run folder", metavar="RUN_DIR"
    )
    reflow_pairs: int = setting(20000, "noise-sample pairs drawn from the --reflow-from flow", metavar="N")
    mle_finetune: int = setting(  # None: resolved in __post_init__
        None,
        "iterations of maximum-likelihood fine-tune after flow matching (exact likelihood through the solver; 0: "
        "none; default: 1800 with the OT coupling on 2-D data without --ema or --reflow-from, else 0)",
        metavar="ITERS",
    )
    mle_lr: float = setting(MLE_LR, "Adam learning rate of the fine-tune, cosine-decayed to 0 over --mle-finetune")
    mle_method: str = setting(
        "midpoint",
        "solver of the fine-tune's likelihood: dopri5 at --mle-tol, or a fixed-step method with --mle-steps steps",
        choices=MLE_METHODS,
    )
    mle_steps: int = setting(4, "equal steps of a fixed-step --mle-method over the flow's unit time", metavar="N")
    mle_tol: float = setting(MLE_TOL, "dopri5 rtol = atol of the fine-tune's likelihood solves", metavar="TOL")
    mle_fm_weight: float = setting(
        1.0,
        "weight of the flow-matching loss added to the fine-tune's negative log-likelihood (0: the likelihood alone)",
        metavar="W",
    )
    mle_adjoint: bool = setting(
        False, "fine-tune gradients by the adjoint method (else backpropagation through the solver)"
    )
    threads: int | None = setting(1, "torch threads for the run (one is fastest for the 2-D models)", metavar="N")

    @classmethod
    def upgrade(cls, d: Mapping[str, Any]) -> Mapping[str, Any]:
        """A config saved before the fine-tune existed ran none (``mle_finetune=0``, not today's default for 2-D
        data); one saved before ``mle_method`` and ``mle_fm_weight`` existed fine-tuned by dopri5 on the likelihood
        alone. Either resumes, evaluates and reflows as it ran."""
        if "mle_finetune" not in d:
            d = {**d, "mle_finetune": 0}
        if "mle_method" not in d:
            d = {**d, "mle_method": "dopri5", "mle_fm_weight": 0.0}
        return d

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_choice("dataset", FLOW_DATASETS)
        # The defaults that depend on the data (see the module docstring, "Defaults for 2-D data").
        toy = self.dataset not in IMAGE_DATASETS
        if self.mle_finetune is None:
            averaged = isinstance(self.ema, (int, float)) and self.ema > 0
            recipe = toy and self.coupling == "ot" and self.reflow_from is None and not averaged
            object.__setattr__(self, "mle_finetune", 1800 if recipe else 0)
        short = toy and isinstance(self.mle_finetune, int) and self.mle_finetune > 0
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", 128 if short else 256)
        if self.iterations is None:
            object.__setattr__(self, "iterations", 500 if short else 2500)
        self.check_choice("coupling", COUPLINGS)
        self.check_choice("path", PATHS)
        self.check_choice("divergence", ("auto", *DIVERGENCES))
        self.check_choice("noise", NOISE_TYPES)
        self.check_choice("activation", MLP_ACTIVATIONS)
        self.check_ints("time_features", minimum=0)
        self.check_ints("iterations", "batch_size", "channels", "test_samples", "table_samples", "reflow_pairs")
        self.check_ints("mle_finetune", minimum=0)
        self.check_choice("mle_method", MLE_METHODS)
        self.check_ints("mle_steps")
        self.check_numbers("mle_fm_weight", positive=False)
        self.check_numbers("mle_lr")
        if not (isinstance(self.mle_tol, (int, float)) and not isinstance(self.mle_tol, bool) and 0 < self.mle_tol < 1):
            self.fail("mle_tol", "a tolerance in (0, 1)")
        self.check_ints("threads", optional=True)
        self.check_numbers("lr", "tol")
        self.check_numbers("sigma", positive=False)
        self.check_numbers("guidance", positive=False)
        self.check_numbers("label_dropout", positive=False, at_most=1.0)
        if not (isinstance(self.ema, (int, float)) and not isinstance(self.ema, bool) and 0 <= self.ema < 1):
            self.fail("ema", "a decay in [0, 1) (0: no moving average)")
        if not self.table_tolerances or not all(
            isinstance(v, (int, float)) and 0 < v < 1 for v in self.table_tolerances
        ):
            self.fail("table_tolerances", "one or more tolerances in (0, 1)")
        for name in ("hidden_dims", "table_steps"):
            values = getattr(self, name)
            if not values or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in values):
                self.fail(name, "one or more positive integers")
        if self.coupling == "ot" and self.batch_size < 2:
            raise ConfigError(
                "batch_size",
                f"FlowTrainConfig.batch_size must be at least 2 for coupling='ot' (it pairs the "
                f"batch's noise with its data); got {self.batch_size}.",
            )
        if self.reflow_from is not None and self.coupling != "independent":
            raise ConfigError(
                "coupling",
                f"FlowTrainConfig.coupling must be 'independent' with reflow_from: reflow trains on the "
                f"teacher's noise-sample pairs as drawn; got {self.coupling!r}.",
            )
        if self.mle_finetune and self.ema > 0:
            raise ConfigError(
                "ema",
                f"FlowTrainConfig.ema must be 0 with a maximum-likelihood fine-tune (mle_finetune="
                f"{self.mle_finetune}): the fine-tuned weights are the ones evaluated, and an average "
                f"reaching back over the flow-matching iterates would undo the fine-tune; got ema={self.ema!r}. "
                f"Pass --mle-finetune 0 to keep the average, or --ema 0.",
            )
        if self.mle_finetune and self.reflow_from is not None:
            raise ConfigError(
                "mle_finetune",
                f"FlowTrainConfig.mle_finetune must be 0 with reflow_from: reflow straightens the teacher's "
                f"paths, which a likelihood fine-tune does not keep straight; got {self.mle_finetune!r}. "
                f"Pass --mle-finetune 0.",
            )
        if self.conditional and self.dataset not in IMAGE_DATASETS:
            raise ConfigError(
                "conditional",
                f"FlowTrainConfig.conditional needs labelled data ({', '.join(IMAGE_DATASETS)}); "
                f"dataset {self.dataset!r} has no labels.",
            )


# --------------------------------------------------------------------------------------------
# The weight average.


class WeightEMA:
    """The bias-corrected exponential moving average of a model's weights over its training steps.

    After ``k`` updates with the weights ``θ_1 … θ_k`` it holds

        θ̄_k = Σ_{j=1}^{k} β^{k−j} θ_j · (1 − β) / (1 − β^k),

    the exponentially weighted mean of the iterates with weights summing to one. The recursion is
    ``θ̄_k = θ̄_{k−1} + w_k (θ_k − θ̄_{k−1})`` with ``w_k = (1 − β) / (1 − β^k)``: ``w_1 = 1`` (the
    average starts at the first iterate, not at the untrained initialisation) and ``w_k → 1 − β``,
    so the average reaches back about ``1 / (1 − β)`` steps (1000 at ``β = 0.999``) however short
    the run. Dividing by ``1 − β^k`` is Adam's bias correction (Kingma & Ba 2015); the plain
    recursion started at the initial weights keeps the weight ``β^k`` on them, still 8% after 2500
    steps at ``β = 0.999``. Buffers (none in the velocity fields here) are
    copied, not averaged.

    Args:
        model: the trained model; the average starts as a frozen copy of it.
        decay: ``β`` in ``(0, 1)``.

    Attributes:
        model: the averaged copy (in eval mode, no gradients), evaluated and sampled in place of
            the trained weights.
        updates: ``k``, the number of :meth:`update` calls so far.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not (isinstance(decay, float) and 0.0 < decay < 1.0):
            raise ValueError(f"decay must be a float in (0, 1); got {decay!r}.")
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` (the architecture of :attr:`model`) into the average."""
        self.updates += 1
        weight = (1.0 - self.decay) / (1.0 - self.decay**self.updates)
        for avg, new in zip(self.model.parameters(), model.parameters()):
            avg.lerp_(new.detach(), weight)
        for kept, current in zip(self.model.buffers(), model.buffers()):
            kept.copy_(current)

    def state_dict(self) -> dict[str, Any]:
        """``decay``, ``updates`` and the averaged weights (``model``): what a checkpoint keeps."""
        return {"decay": self.decay, "updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises:
            ValueError: a saved decay other than this average's (the weights of the two differ).
        """
        if float(state["decay"]) != self.decay:
            raise ValueError(
                f"the checkpoint's weight average has decay {state['decay']!r} and this run asks for "
                f"{self.decay!r}; resume with --ema {state['decay']!r} (or start a new run)."
            )
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["model"])


def evaluation_weights(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a flow checkpoint is evaluated and sampled with: the moving average's when the run
    kept one (``ema > 0``), else the trained weights."""
    ema = state.get("ema")
    return dict(ema["model"] if ema is not None else state["model"])


# --------------------------------------------------------------------------------------------
# Data.


class FlowData:
    """The run's data: training minibatches as functions of ``(seed, iteration)`` and a fixed test set.

    Args:
        config: the run's settings (``dataset``, ``seed``, ``data_dir``, ``reflow_from``).
        training: make a reflow run's pairs (evaluation needs only the held-out data).

    Attributes:
        shape: one sample's shape, ``(2,)`` or ``(C, H, W)``.
        levels: grey levels ``K`` of an image dataset (``None`` for toy data).
        num_classes: classes of a labelled dataset (``None`` for toy data).
    """

    def __init__(self, config: FlowTrainConfig, *, training: bool = True) -> None:
        self.name, self.seed = config.dataset, config.seed
        self.images: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.name == "digits":
            from ..datasets.digits import DIGITS_LEVELS, load_digits

            self.images = {train: load_digits(train=train) for train in (True, False)}
            self.levels: int | None = DIGITS_LEVELS
        elif self.name == "mnist":
            from ..datasets.mnist import load_mnist

            self.images = {}
            for train in (True, False):
                x, y = load_mnist(config.data_dir, train=train)
                self.images[train] = (x.unsqueeze(1), y)  # (N, 1, 28, 28) uint8
            self.levels = 256
        else:
            self.levels = None
        self.shape: tuple[int, ...] = tuple(self.images[True][0].shape[1:]) if self.images else (2,)
        self.num_classes = 10 if self.images else None
        self.teacher: nn.Module | None = None
        self.pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
        if config.reflow_from is not None and training:
            self.teacher, self.pairs = self._reflow(config)

    def _reflow(
        self, config: FlowTrainConfig
    ) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        from .checkpoints import CheckpointError

        assert config.reflow_from is not None  # called only for a reflow run
        path = Path(config.reflow_from) / CHECKPOINT_NAME
        if not path.is_file():
            raise ConfigError(
                "reflow_from", f"no {CHECKPOINT_NAME} in {str(config.reflow_from)!r}: name a trained flow run folder."
            )
        try:
            state = load_flow_checkpoint(path)
        except CheckpointError as exc:
            raise ConfigError("reflow_from", str(exc)) from None
        saved = FlowTrainConfig.from_saved(state["config"])
        shape = {
            k: (getattr(saved, k), getattr(config, k))
            for k in ("dataset", "hidden_dims", "activation", "time_features", "channels", "conditional")
        }
        differ = [f"{k}: {a!r} there, {b!r} here" for k, (a, b) in shape.items() if a != b]
        if differ:
            raise ConfigError(
                "reflow_from",
                f"the flow in {str(config.reflow_from)!r} differs from this run ({'; '.join(differ)}); "
                f"reflow continues the same field on the same data.",
            )
        teacher = build_model(saved, self)
        teacher.load_state_dict(evaluation_weights(state))
        g = step_generator(config.seed, 0, stream=6)
        labels = torch.randint(0, 10, (config.reflow_pairs,), generator=g) if config.conditional else None
        x0, x1 = reflow_pairs(
            teacher,
            config.reflow_pairs,
            labels=labels,
            guidance=config.guidance,
            rtol=config.tol,
            atol=config.tol,
            generator=g,
        )
        return teacher, (x0, x1, labels)

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def _dequantise(self, v: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        assert self.levels is not None  # only image data, which has grey levels, is dequantised
        u = torch.rand(v.shape, generator=g)
        return 2 * (v.to(torch.float32) + u) / self.levels - 1

    def batch(self, iteration: int, n: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The global minibatch of ``iteration``: ``(x1 (n, *shape) float32, labels (n,) or None,
        x0)``, where ``x0`` is the paired noise of a reflow run and ``None`` otherwise."""
        g = step_generator(self.seed, iteration)
        if self.pairs is not None:
            x0, x1, y = self.pairs
            idx = torch.randint(0, x1.shape[0], (n,), generator=g)
            return x1[idx], None if y is None else y[idx], x0[idx]
        if not self.images:
            return sample_toy(self.name, n, generator=g), None, None
        x, y = self.images[True]
        idx = torch.randint(0, x.shape[0], (n,), generator=g)
        return self._dequantise(x[idx], g), y[idx], None

    def test(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n`` held-out points (toy: fresh draws from a stream no training batch uses; images: the
        first ``n`` of the test split, dequantised with a fixed draw) and their labels."""
        g = step_generator(self.seed, 0, stream=1)
        if not self.images:
            return sample_toy(self.name, n, generator=g), None
        x, y = self.images[False]
        return self._dequantise(x[:n], g), y[:n]

    def reference(self, n: int) -> torch.Tensor:
        """``n`` further data points apart from :meth:`test`: the W2 between them and the test
        points is the floor a perfect model's samples would show at this sample size."""
        g = step_generator(self.seed, 0, stream=4)
        if not self.images:
            return sample_toy(self.name, n, generator=g)
        x, _ = self.images[True]
        return self._dequantise(x[torch.randperm(x.shape[0], generator=g)[:n]], g)


def build_model(config: FlowTrainConfig, data: FlowData | None = None) -> nn.Module:
    """The velocity field a config describes (untrained): an MLP for 2-D data, a U-Net for images."""
    classes = 10 if config.conditional else None
    if config.dataset in IMAGE_DATASETS:
        shape = data.shape if data is not None else ((1, 8, 8) if config.dataset == "digits" else (1, 28, 28))
        return UNetVelocity(shape, channels=config.channels, num_classes=classes)
    return VelocityMLP(
        2, config.hidden_dims, num_classes=classes, time_features=config.time_features, activation=config.activation
    )


def _divergence(config: FlowTrainConfig, dim: int) -> str:
    if config.divergence != "auto":
        return config.divergence
    return "exact" if dim <= 16 else "hutchinson"


def evaluate_nll(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None, config: FlowTrainConfig, *, batch_size: int = 2500
) -> tuple[float, float]:
    """Mean negative log-likelihood (nats) of ``x`` under the flow (dopri5 at ``config.tol``).

    With a conditional field, the density of the unguided conditional flow given each point's label.
    A Hutchinson estimate draws its probes from the global generator, seeded here from ``config.seed``
    so that the evaluation repeats exactly.

    Returns:
        ``(nll, mean NFE per batch)``.
    """
    divergence = _divergence(config, x[0].numel())
    torch.manual_seed(config.seed + 7919)
    total, nfe, batches = 0.0, 0, 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            y = None if labels is None or not config.conditional else labels[i : i + batch_size]
            lp, n = log_prob(
                model,
                x[i : i + batch_size],
                labels=y,
                divergence=divergence,
                noise=config.noise,
                rtol=config.tol,
                atol=config.tol,
                return_nfe=True,
            )
            total += -lp.sum().item()
            nfe += n
            batches += 1
    return total / x.shape[0], nfe / batches


def sampling_table(
    model: nn.Module,
    data: FlowData,
    config: FlowTrainConfig,
    *,
    n: int | None = None,
    steps: tuple[int, ...] | None = None,
) -> list[dict[str, Any]]:
    """Samples per NFE: one row per solver setting, all from the same noise.

    Rows: each of :data:`TABLE_METHODS` at each of ``steps`` (default ``config.table_steps``), then
    dopri5 at each of ``config.table_tolerances``. Each row has ``method``, ``steps`` (``None`` for
    dopri5), ``rtol``, ``nfe``, ``seconds`` and ``w2``: the exact 2-Wasserstein distance between the
    ``n`` samples and ``n`` held-out points (data space; images in ``[-1, 1]`` per pixel).

    One draw of noise and held-out points serves every row, so the rows compare solvers on one field.
    Across fields the draw itself enters: a deterministic flow sends a fixed noise draw to fixed
    places, and at a few hundred to a thousand points the empirical W2 moves by several hundredths
    from draw to draw (on 8 gaussians mostly with how many points land in each mode). Compare fields
    by the mean over independent draws, as ``benchmarks/bench_flows.py`` does.
    """
    n = n or config.table_samples
    target, labels = data.test(n)
    n = target.shape[0]
    p = next(model.parameters())
    x0 = torch.randn(n, *data.shape, generator=step_generator(config.seed, 0, stream=2)).to(p.device, p.dtype)
    y = labels.to(p.device) if (config.conditional and labels is not None) else None
    settings: list[tuple[str, int | None, float | None]]
    settings = [(m, s, None) for m in TABLE_METHODS for s in (steps or config.table_steps)]
    settings += [("dopri5", None, tol) for tol in config.table_tolerances]
    rows = []
    for method, s, tol in settings:
        kw: dict[str, Any] = dict(steps=s) if s is not None else dict(rtol=tol, atol=tol)
        result = sample(model, x0=x0, labels=y, guidance=config.guidance, method=method, **kw)
        rows.append(
            {
                "method": method,
                "steps": s,
                "rtol": tol,
                "nfe": result.nfe,
                "seconds": result.seconds,
                "w2": wasserstein2(result.x.cpu(), target),
            }
        )
    return rows


def w2_floor(data: FlowData, config: FlowTrainConfig, n: int | None = None) -> float:
    """The W2 between the table's held-out points and as many other data points: what a perfect
    sampler would score at this sample size (the empirical distance does not reach 0)."""
    target, _ = data.test(n or config.table_samples)
    return wasserstein2(data.reference(target.shape[0]), target)


def load_flow_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a flow checkpoint (CPU tensors), checked as :func:`neuralode.training.checkpoints.load_checkpoint` does."""
    return load_checkpoint(path, kind="flow")


# --------------------------------------------------------------------------------------------
# Training.


def train_flow(config: FlowTrainConfig) -> dict[str, Any]:
    """Train a velocity field by flow matching; see the module docstring for the files written.

    Returns:
        A summary: ``run_dir``, ``dataset``, ``iterations_completed``, ``interrupted`` (``None`` or the
        signal's name), ``final`` (the final metrics line, ``None`` when interrupted), ``test_nll``,
        ``seconds`` (training wall time over resumed sessions), ``checkpoint``, ``figures``.

    Raises:
        ConfigError: an unusable ``out``, or a batch that does not split over the processes (or
            leaves an OT shard of fewer than 2).
        FileExistsError / FileNotFoundError / CheckpointError / RunLockedError: as
            :meth:`neuralode.training.rundir.RunDir.open` says.
        ImportError: ``digits`` without scikit-learn (the message gives the install command).
    """
    return run_task(config, "flow", _train)


def _train(config: FlowTrainConfig, ctx: Dist, run: RunDir, stop: StopFlag) -> dict[str, Any]:
    rows = ctx.shard(config.batch_size)
    if config.coupling == "ot" and rows.stop - rows.start < 2:
        raise ConfigError(
            "batch_size",
            f"batch_size={config.batch_size} leaves {rows.stop - rows.start} sample per process; "
            f"the OT coupling needs at least 2 per process: raise --batch-size.",
        )
    data = FlowData(config)  # before the lock: a missing scikit-learn or MNIST folder fails without a trace
    checkpoint = run.open(config)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = build_model(config, data)
    if data.teacher is not None:  # reflow starts from the teacher's field
        model.load_state_dict(data.teacher.state_dict())
    model = model.to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    fm_window, mle_window = Sums(*_FIGURES), Sums(*_MLE_FIGURES)
    finetune = config.mle_finetune
    total = config.iterations + finetune
    if checkpoint is not None:
        _check_finetune_resume(checkpoint, config)
    # The checkpoint holds the logging window of the phase it was saved in.
    in_mle = checkpoint is not None and int(checkpoint["iteration"]) > config.iterations
    start, seconds = restore_iteration_state(checkpoint, model, optimizer, mle_window if in_mle else fm_window, ctx)
    ema = WeightEMA(model, float(config.ema)) if config.ema > 0 else None
    if ema is not None and checkpoint is not None and checkpoint.get("ema") is not None:
        try:
            ema.load_state_dict(checkpoint["ema"])
        except ValueError as exc:
            raise ConfigError("ema", str(exc)) from None
    # A checkpoint without an average (ema 0 before, or a run older than the option) starts one here.
    history = run.restart_metrics(start)
    run.write_config(config, task="flow", world_size=ctx.world_size, device=str(ctx.device), torch=torch.__version__)
    if checkpoint is not None:
        run.note(f"Resuming {run.path} from its checkpoint at iteration {start}.")
    run.plan(
        total,
        start,
        f"flow matching on {config.dataset} ({config.coupling} coupling, {config.path} path), "
        f"batch {config.batch_size}" + (f", then {finetune} of maximum-likelihood fine-tune" if finetune else ""),
    )
    divergence = _divergence(config, data.dim)

    def flow_matching_loss(
        iteration: int, x1: torch.Tensor, labels: torch.Tensor | None, x0: torch.Tensor | None
    ) -> torch.Tensor:
        """The flow-matching loss of iteration ``iteration``'s global batch (this rank's rows): its
        noise, times, label dropout and path noise drawn from the iteration's own stream."""
        g = step_generator(config.seed, iteration, stream=3)
        x0 = torch.randn(x1.shape, generator=g) if x0 is None else x0
        t = torch.rand(x1.shape[0], generator=g)
        if labels is not None and config.conditional:
            labels = torch.where(torch.rand(x1.shape[0], generator=g) < config.label_dropout, -1, labels)[rows].to(
                ctx.device
            )
        else:
            labels = None
        eps = torch.randn(x1.shape, generator=g)[rows].to(ctx.device) if config.sigma > 0 else None
        return cfm_loss(
            model,
            x1[rows].to(ctx.device),
            path=config.path,
            coupling=config.coupling,
            sigma=config.sigma,
            labels=labels,
            x0=x0[rows].to(ctx.device),
            t=t[rows].to(ctx.device),
            noise=eps,
        )

    def save(iteration: int, window: Sums) -> None:
        state = iteration_state(iteration, seconds, model, optimizer, window, ctx)
        run.save(config, {**state, "ema": None if ema is None else ema.state_dict()})

    iteration = start
    with progress_bar(
        total,
        f"flow {config.dataset} ({config.coupling})",
        enabled=config.progress and ctx.is_main,
        unit="it",
        initial=start,
    ) as bar:
        for iteration in range(start + 1, total + 1):
            t0 = time.perf_counter()
            mle = iteration > config.iterations
            window = mle_window if mle else fm_window
            # Every draw over the global batch, then this rank's rows (see the module docstring).
            x1, labels, x0 = data.batch(iteration, config.batch_size)
            if mle:
                if iteration == config.iterations + 1:
                    # Adam's moment estimates of the regression loss do not describe the likelihood's
                    # gradients: the fine-tune starts with fresh ones (a resume restores them after this).
                    optimizer.state.clear()
                for group in optimizer.param_groups:
                    group["lr"] = cosine_lr(config.mle_lr, iteration - config.iterations - 1, finetune)
                y = labels[rows].to(ctx.device) if labels is not None and config.conditional else None
                logp, nfe = log_prob(
                    model,
                    x1[rows].to(ctx.device),
                    labels=y,
                    divergence=divergence,
                    noise=config.noise,
                    method=config.mle_method,
                    steps=None if config.mle_method == "dopri5" else config.mle_steps,
                    rtol=config.mle_tol,
                    atol=config.mle_tol,
                    adjoint=config.mle_adjoint,
                    return_nfe=True,
                )
                nll = -logp.mean()
                loss = nll
                if config.mle_fm_weight > 0:
                    loss = nll + config.mle_fm_weight * flow_matching_loss(iteration, x1, labels, x0)
            else:
                for group in optimizer.param_groups:
                    group["lr"] = cosine_lr(config.lr, iteration - 1, config.iterations)
                loss = flow_matching_loss(iteration, x1, labels, x0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ctx.average_gradients(model.parameters())
            optimizer.step()
            if ema is not None:
                ema.update(model)
            seconds += time.perf_counter() - t0
            if mle:
                window.add(nll=nll.item(), nfe_forward=nfe, n=1)
                bar.set_postfix(nll=f"{nll.item():.4f}", nfe=nfe, refresh=False)
            else:
                window.add(loss=loss.item(), n=1)
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            bar.update()
            if iteration % config.log_every == 0 or iteration in (config.iterations, total):
                totals = window.totals(ctx)
                record: dict[str, Any] = {"iteration": iteration}
                if mle:
                    record.update(
                        phase="mle", nll=totals["nll"] / totals["n"], nfe_forward=totals["nfe_forward"] / totals["n"]
                    )
                else:
                    record["loss"] = totals["loss"] / totals["n"]
                record.update(lr=optimizer.param_groups[0]["lr"], seconds=seconds)
                history.append(record)
                run.append(record)
                window.reset()
            signum, due = ctx.any_signal(stop.signum), run.after_step(iteration)
            if signum or due or iteration in (config.iterations, total):
                save(iteration, window)
            if signum:
                run.note_stopped(stop.name, f"iteration {iteration}", resume_hint("flow", config.out, ctx))
                return _summary(config, ctx, run, iteration, stop.name or "SIGTERM", seconds)

    summary = _summary(config, ctx, run, iteration, None, seconds)
    t1 = time.perf_counter()
    model = (ema.model if ema is not None else model).eval()  # the weights evaluated and sampled
    result = _evaluate(model, data, config, ctx.device)
    final = {
        "iteration": iteration,
        "final": True,
        **result,
        "seconds": seconds,
        "eval_seconds": time.perf_counter() - t1,
    }
    run.append(final)
    summary.update(final=final, test_nll=result["test_nll"])
    if config.plot and ctx.is_main:
        summary["figures"] = [
            str(p)
            for p in write_figures(
                model,
                config,
                run.path,
                data=data,
                table=result["sampling"],
                iteration=iteration,
                test_nll=result["test_nll"],
            )
        ]
    return summary


def _check_finetune_resume(checkpoint: Mapping[str, Any], config: FlowTrainConfig) -> None:
    """A checkpoint saved inside the fine-tune numbers its iterations after the saved run's flow-matching
    ones: the resumed run must keep ``iterations`` (``mle_finetune`` may change)."""
    saved = int(checkpoint["config"]["iterations"])
    if int(checkpoint["iteration"]) > saved and config.iterations != saved:
        raise ConfigError(
            "iterations",
            f"FlowTrainConfig.iterations must stay {saved} on resume: the checkpoint is at iteration "
            f"{checkpoint['iteration']}, inside the maximum-likelihood fine-tune that follows the run's {saved} "
            f"flow-matching iterations; got {config.iterations}. Resume with --iterations {saved} "
            f"(raise --mle-finetune to fine-tune longer).",
        )


def _evaluate(
    model: nn.Module, data: FlowData, config: FlowTrainConfig, device: torch.device, test_samples: int | None = None
) -> dict[str, Any]:
    x, labels = data.test(test_samples or config.test_samples)
    nll, nfe = evaluate_nll(model, x.to(device), labels, config)
    out = {
        "test_nll": nll,
        "test_nfe_forward": nfe,
        "test_samples": x.shape[0],
        "divergence": _divergence(config, data.dim),
    }
    if data.levels is not None:
        out["test_bpd"] = bits_per_dim(nll, data.dim, data.levels)
    out["sampling"] = sampling_table(model, data, config)
    out["w2_floor"] = w2_floor(data, config)
    return out


def _summary(
    config: FlowTrainConfig, ctx: Dist, run: RunDir, iteration: int, interrupted: str | None, seconds: float
) -> dict[str, Any]:
    return {
        "run_dir": str(run.path),
        "rank": ctx.rank,
        "dataset": config.dataset,
        "iterations_completed": iteration,
        "interrupted": interrupted,
        "seconds": seconds,
        "final": None,
        "test_nll": None,
        "checkpoint": str(run.checkpoint_path),
        "figures": [],
    }


# --------------------------------------------------------------------------------------------
# Evaluation and figures of a saved run.


def _load(run_dir: str | os.PathLike[str]) -> tuple[nn.Module, FlowTrainConfig, FlowData, int]:
    state = load_flow_checkpoint(Path(run_dir) / CHECKPOINT_NAME)
    config = FlowTrainConfig.from_saved(state["config"])
    data = FlowData(config, training=False)
    model = build_model(config, data)
    model.load_state_dict(evaluation_weights(state))
    model.eval()
    return model, config, data, int(state["iteration"])


def evaluate(run_dir: str | os.PathLike[str], *, test_samples: int | None = None) -> dict[str, Any]:
    """Load ``RUN_DIR``'s checkpoint: its test NLL (and bits/dim for images) and samples-per-NFE table.

    Returns:
        ``test_nll``, ``test_nfe_forward``, ``test_samples``, ``divergence``, ``test_bpd`` (images),
        ``sampling`` (rows as in :func:`sampling_table`), ``iteration``, ``dataset``, ``coupling``.
    """
    model, config, data, iteration = _load(run_dir)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    result = _evaluate(model, data, config, torch.device("cpu"), test_samples)
    return {**result, "iteration": iteration, "dataset": config.dataset, "coupling": config.coupling}


def plot_saved_run(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Write a saved run's figures (:data:`FIGURE_NAMES`) into its folder; the table is recomputed."""
    model, config, data, iteration = _load(run_dir)
    final = next((r for r in reversed(_read_metrics(run_dir)) if r.get("final")), None)
    table = test_nll = None
    if final and final.get("iteration") == iteration:
        table = final["sampling"]
        test_nll = final["test_nll"] if table is not None else None
    return write_figures(model, config, Path(run_dir), data=data, table=table, iteration=iteration, test_nll=test_nll)


def _read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    from .rundir import METRICS_NAME, read_jsonl

    return read_jsonl(Path(run_dir) / METRICS_NAME)


def write_figures(
    model: nn.Module,
    config: FlowTrainConfig,
    out: Path,
    *,
    data: FlowData | None = None,
    table: list[dict[str, Any]] | None = None,
    iteration: int | None = None,
    test_nll: float | None = None,
    n_samples: int = 2000,
    particles: int = 12,
) -> list[Path]:
    """Write ``samples.png``, ``trajectories.png`` and ``quality_vs_nfe.png`` for a trained field into ``out``.

    ``table`` is :func:`sampling_table`'s (computed here when ``None``); ``iteration`` and
    ``test_nll`` (nats) go into the titles.
    """
    from ..plotting import plot_image_grid, plot_particle_paths, plot_point_clouds, plot_quality_vs_nfe, save_figure

    model = model.cpu()
    data = data or FlowData(config, training=False)
    table = table if table is not None else sampling_table(model, data, config)
    where = f"{config.dataset}, {config.coupling} coupling, {config.path} path" + (
        f", iteration {iteration}" if iteration is not None else ""
    )
    score = f", test NLL {test_nll:.3f} nats" if test_nll is not None else ""
    if data.levels is not None and test_nll is not None:
        score += f" ({bits_per_dim(test_nll, data.dim, data.levels):.3f} bits/dim)"
    g = step_generator(config.seed, 0, stream=5)
    times = [k / 5 for k in range(6)]
    if data.images:
        n_grid = 64
        target, labels = data.test(n_grid)
        y = labels if config.conditional else None
        result = sample(
            model,
            n_grid,
            labels=y,
            guidance=config.guidance,
            rtol=config.tol,
            atol=config.tol,
            times=times,
            generator=g,
        )
        shown = lambda x: (x.clamp(-1, 1) + 1) / 2  # noqa: E731 - [-1, 1] back to [0, 1] grey
        samples_fig = plot_image_grid(
            [("held-out data", shown(target)), (f"samples (dopri5, {result.nfe} NFE)", shown(result.x))],
            suptitle=f"Flow matching on {where}{score}",
        )
        assert result.trajectory is not None  # sample() returns one when given times
        traj = result.trajectory[:, :8].transpose(0, 1).reshape(-1, *data.shape)  # (8 samples x 6 times, C, H, W)
        traj_fig = plot_image_grid(
            [("columns: t = " + ", ".join(f"{t:.1f}" for t in times), shown(traj))],
            columns=len(times),
            suptitle=f"Flow matching on {config.dataset}:\n8 samples from noise (t = 0) to data (t = 1)",
        )
    else:
        target, _ = data.test(n_samples)
        result = sample(
            model, n_samples, rtol=config.tol, atol=config.tol, times=[k / 50 for k in range(51)], generator=g
        )
        samples_fig = plot_point_clouds(
            [("held-out data", target), (f"model samples (dopri5, {result.nfe} NFE)", result.x)],
            suptitle=f"Flow matching on {where}{score}: {n_samples} samples each",
        )
        assert result.trajectory is not None  # sample() returns one when given times
        traj_fig = plot_particle_paths(
            result.trajectory[:, :particles],
            background=result.x,
            title=f"Flow matching on {where}:\n{particles} particles from noise (t = 0, ○) to data (t = 1, ●)",
        )
    quality = plot_quality_vs_nfe(
        {
            m: [(r["nfe"], r["w2"]) for r in table if r["method"] == m]
            for m in dict.fromkeys(r["method"] for r in table)
        },
        title=f"Sample quality against cost: {where}",
        ylabel="2-Wasserstein distance to held-out data",
        reference=w2_floor(data, config),
        reference_label="data against data (W2 floor at this sample size)",
    )
    return [
        save_figure(samples_fig, out / FIGURE_NAMES[0]),
        save_figure(traj_fig, out / FIGURE_NAMES[1]),
        save_figure(quality, out / FIGURE_NAMES[2]),
    ]
