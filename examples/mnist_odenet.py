"""An ODE-Net classifies MNIST digits: the paper's continuous-depth replacement for residual blocks.

The network is the paper's (Table 1): a convolutional stem, one continuous-depth block
``z(1) = z(0) + ∫_0^1 f(z(t), t) dt`` whose ``f`` is two time-aware 3x3 convolutions, solved by
dopri5 at rtol = atol = 1e-3 and differentiated by the adjoint method, then a linear head. This
script trains it with SGD on a subset of the training images and reports the test error and the
evaluations of ``f`` per forward and backward solve, which grow as the dynamics the block learns
become harder to integrate.

    python examples/mnist_odenet.py --data-dir PATH [--train 6000] [--iterations 200] [--out mnist_odenet_out]
    python examples/mnist_odenet.py --data-dir PATH --quick      # 4 steps on 512 images (CI)

``PATH`` holds MNIST's four IDX files (``.gz`` or not); without ``--data-dir`` they are downloaded
(about 11 MB, checked against their SHA-256 sums) into ``$NEURALODE_DATA/mnist`` or
``~/.cache/neuralode/mnist``. Writes ``mnist_odenet.png`` (training loss and NFE per step) and
``metrics.json`` to ``--out``. ``neuralode train mnist`` is the full task (all four models, the
paper's schedule, checkpoints, resume, data parallel).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from neuralode.datasets.mnist import mnist_dataset
from neuralode.models import build_classifier, count_parameters
from neuralode.plotting import save_figure


def test_error(model: torch.nn.Module, test, batch_size: int = 500) -> float:
    """Fraction of misclassified test images."""
    model.eval()
    wrong = 0
    with torch.no_grad():
        for start in range(0, len(test), batch_size):
            x, y = test.batch(range(start, min(start + batch_size, len(test))))
            wrong += int((model(x).argmax(1) != y).sum())
    model.train()
    return wrong / len(test)


def plot(history: list[dict], error: float, n_test: int, path: Path) -> None:
    steps = [h["iteration"] for h in history]
    fig = Figure(figsize=(9, 3.4), dpi=110, layout="constrained")
    loss_ax, nfe_ax = fig.subplots(1, 2)
    loss_ax.plot(steps, [h["loss"] for h in history])
    loss_ax.set_xlabel("SGD step")
    loss_ax.set_ylabel("training cross-entropy (nats)")
    nfe_ax.plot(steps, [h["nfe_forward"] for h in history], label="forward solve")
    nfe_ax.plot(steps, [h["nfe_backward"] for h in history], label="adjoint backward solve")
    nfe_ax.set_xlabel("SGD step")
    nfe_ax.set_ylabel("evaluations of f per solve")
    nfe_ax.legend()
    fig.suptitle(f"ODE-Net on MNIST: test error {100 * error:.2f}% on {n_test} test images")
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with the IDX files (else download)")
    parser.add_argument("--train", type=int, default=6000, help="training images used (default 6000; quick: 512)")
    parser.add_argument("--test", type=int, default=2000, help="test images scored (default 2000; quick: 256)")
    parser.add_argument("--iterations", type=int, default=200, help="SGD steps (default 200; quick: 4)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate, momentum 0.9 (default 0.05)")
    parser.add_argument("--quick", action="store_true", help="4 steps of 32 of 512 images, 256 test images (CI)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("mnist_odenet_out"), help="output folder")
    args = parser.parse_args()
    if args.quick:
        args.train, args.test = min(args.train, 512), min(args.test, 256)
        args.iterations, args.batch_size = min(args.iterations, 4), min(args.batch_size, 32)
    if args.iterations < 1:
        parser.error(f"--iterations must be at least 1; got {args.iterations}")
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    train = mnist_dataset(args.data_dir, train=True, augment=True, subset=args.train, seed=args.seed)
    test = mnist_dataset(args.data_dir, train=False, subset=args.test)
    model = build_classifier("odenet", tol=1e-3, adjoint=True)
    block = model.ode_block  # counts the evaluations of f of its last forward pass and that pass's backward
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    print(f"ODE-Net, {count_parameters(model) / 1e6:.3f}M parameters; {len(train)} training images", flush=True)

    stream = torch.Generator().manual_seed(args.seed)
    history, start = [], time.perf_counter()
    for it in range(args.iterations):
        if it * args.batch_size % len(train) < args.batch_size:  # a new pass over the subset: new crops
            train.set_epoch(it * args.batch_size // len(train))
        x, y = train.batch(torch.randint(0, len(train), (args.batch_size,), generator=stream))  # (B, 1, 28, 28), (B,)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(
            {
                "iteration": it + 1,
                "loss": loss.item(),
                "nfe_forward": block.nfe_forward,
                "nfe_backward": block.nfe_backward,
            }
        )
        if it % max(1, args.iterations // 10) == 0 or it == args.iterations - 1:
            print(
                f"step {it + 1:4d}  loss {loss.item():.3f}  nfe {block.nfe_forward} + {block.nfe_backward}", flush=True
            )
    seconds = time.perf_counter() - start

    error = test_error(model, test)
    plot(history, error, len(test), args.out / "mnist_odenet.png")
    metrics = {
        "train_images": len(train),
        "test_images": len(test),
        "iterations": args.iterations,
        "seconds": seconds,
        "test_error": error,
        "history": history,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(
        f"test error {100 * error:.2f}% on {len(test)} images after {args.iterations} steps ({seconds:.0f} s); "
        f"wrote {args.out / 'mnist_odenet.png'}"
    )


if __name__ == "__main__":
    main()
