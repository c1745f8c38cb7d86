"""MNIST classifiers of the paper's Table 1: ODE-Net, RK-Net, ResNet and a one-layer MLP.

As in the paper's reference code, the ResNet, RK-Net and ODE-Net share a downsampling stem and a
classification head, so only the middle differs:

* stem: ``Conv(1→64, 3×3)``, GroupNorm, ReLU, ``Conv(64→64, 4×4, stride 2, pad 1)``, GroupNorm,
  ReLU, ``Conv(64→64, 4×4, stride 2, pad 1)``: ``(B, 1, 28, 28) -> (B, 64, 6, 6)``;
* middle: six residual blocks (ResNet), or one continuous-depth block ``z(1) = z(0) + ∫ f``
  with the paper's ``f`` (two time-concatenated 3×3 convolutions with group norm), solved with
  fixed-step rk4 and backpropagation (RK-Net) or adaptive dopri5 and the adjoint (ODE-Net);
* head: GroupNorm, ReLU, global average pool, ``Linear(64→10)``.

Paper (Chen et al. 2018, Table 1, test error / parameters): MLP 1.60% / 0.24M, ResNet 0.41% /
0.60M, RK-Net 0.47% / 0.22M, ODE-Net 0.42% / 0.22M.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConcatConv2d, ODEBlock, ODEFunc

MODEL_NAMES = ("odenet", "rknet", "resnet", "mlp")


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels)


class ResBlock(nn.Module):
    """Pre-activation residual block ``x + conv(relu(norm(conv(relu(norm(x))))))``, 3×3 convs."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = _norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(torch.relu(self.norm1(x)))
        out = self.conv2(torch.relu(self.norm2(out)))
        return x + out


class ConvODEFunc(ODEFunc):
    """The paper's ODE-Net dynamics: norm, ReLU, concat-conv, norm, ReLU, concat-conv, norm.

    Shapes: ``t`` 0-dim, ``y`` ``(B, C, H, W)`` -> ``(B, C, H, W)``.
    """

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.norm1 = _norm(channels)
        self.conv1 = ConcatConv2d(channels, channels, 3, padding=1)
        self.norm2 = _norm(channels)
        self.conv2 = ConcatConv2d(channels, channels, 3, padding=1)
        self.norm3 = _norm(channels)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.conv1(t, torch.relu(self.norm1(y)))
        out = self.conv2(t, torch.relu(self.norm2(out)))
        return self.norm3(out)


def _stem() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 64, 3, 1),  # (B, 64, 26, 26)
        _norm(64),
        nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, 4, 2, 1),  # (B, 64, 13, 13)
        _norm(64),
        nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, 4, 2, 1),  # (B, 64, 6, 6)
    )


def _head() -> nn.Sequential:
    return nn.Sequential(
        _norm(64),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),  # (B, 64)
        nn.Linear(64, 10),
    )


class ODEClassifier(nn.Module):
    """Stem, one :class:`~neuralode.models.ODEBlock`, head; ``ode_block`` exposes the NFE counters."""

    def __init__(self, ode_block: ODEBlock) -> None:
        super().__init__()
        self.stem = _stem()
        self.ode_block = ode_block
        self.head = _head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ode_block(self.stem(x)))  # (B, 1, 28, 28) -> (B, 10)


def build_classifier(name: str, tol: float = 1e-3, adjoint: bool = True, rk_steps: int = 1) -> nn.Module:
    """Build one of the Table 1 classifiers.

    Args:
        name: ``"odenet"``, ``"rknet"``, ``"resnet"`` or ``"mlp"``.
        tol: rtol = atol of the ODE-Net's dopri5 solve.
        adjoint: ODE-Net gradients by the adjoint method (else backprop through the solver).
        rk_steps: RK-Net's number of rk4 steps over ``[0, 1]``.

    Returns:
        An ``nn.Module`` mapping ``(B, 1, 28, 28)`` images to ``(B, 10)`` logits. For the ODE
        models, ``model.ode_block`` is the :class:`~neuralode.models.ODEBlock` (NFE counters).
    """
    if not isinstance(name, str) or name not in MODEL_NAMES:
        raise ValueError(f"Unknown model {name!r}. Valid models: {', '.join(MODEL_NAMES)}.")
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 300), nn.ReLU(inplace=True), nn.Linear(300, 10))
    if name == "resnet":
        middle = nn.Sequential(*[ResBlock(64) for _ in range(6)])
        return nn.Sequential(_stem(), middle, _head())
    if name == "rknet":
        block = ODEBlock(ConvODEFunc(64), method="rk4", options={"step_size": 1.0 / rk_steps}, adjoint=False)
    else:
        block = ODEBlock(ConvODEFunc(64), method="dopri5", rtol=tol, atol=tol, adjoint=adjoint)
    return ODEClassifier(block)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
