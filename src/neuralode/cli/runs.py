"""``neuralode eval RUN_DIR`` and ``neuralode plot RUN_DIR``: for a run of any task."""

from __future__ import annotations

import argparse
import json

from .flags import path_arg, positive_int, runtime_error

DEVICES = ("auto", "cpu", "cuda")


def add_eval(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="test metrics of a trained run's checkpoint (MNIST, CNF, flow or latent ODE)",
        description=(
            "Load RUN_DIR/checkpoint.pt and report its test metrics: an MNIST run's test error (by default on "
            "the run's own test subset), a CNF run's test NLL, a flow run's test NLL and samples-per-NFE table, a "
            "latent-ODE run's extrapolation and reconstruction RMSE beside its RNN baseline's."
        ),
        epilog="example: neuralode eval runs/odenet --full",
    )
    parser.add_argument("run_dir", type=path_arg, metavar="RUN_DIR", help="a folder written by 'neuralode train'")
    parser.add_argument(
        "--data-dir", type=path_arg, default=None, metavar="DIR", help="MNIST folder (default: the run's)"
    )
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where to evaluate (default: %(default)s)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--test-subset",
        type=positive_int,
        default=None,
        metavar="N",
        help="the first N test samples (CNF, toy flows: N fresh samples)",
    )
    group.add_argument("--full", action="store_true", help="all 10,000 test samples, whatever the run used")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(handler=run_eval, subparser=parser)


def run_eval(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..datasets.mnist import DownloadError
    from ..training.checkpoints import CheckpointError
    from ..training.figures import run_kind

    if not args.run_dir.is_dir():
        parser.error(f"argument RUN_DIR: {str(args.run_dir)!r} is not a directory")
    kind = run_kind(args.run_dir)
    if kind in ("cnf", "latent", "flow"):
        for flag, given in (("--data-dir", args.data_dir is not None), ("--full", args.full)):
            if given:
                parser.error(f"argument {flag}: applies to MNIST runs; {args.run_dir} is a {kind} run")
        if kind == "latent" and args.test_subset is not None:
            parser.error(
                f"argument --test-subset: a latent-ODE run is evaluated on its own held-out spirals; {args.run_dir} is one"
            )
    if args.data_dir is not None and not args.data_dir.is_dir():
        parser.error(f"argument --data-dir: {str(args.data_dir)!r} is not a directory")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("argument --device: CUDA is not available on this machine; use --device cpu or auto")
    try:
        if kind == "cnf":
            from ..training.cnf import evaluate as evaluate_cnf

            result = evaluate_cnf(args.run_dir, test_samples=args.test_subset)
            text = (
                f"CNF on {result['dataset']} after {result['iteration']} iterations: test NLL "
                f"{result['test_nll']:.4f} nats on {result['test_samples']:,} samples, "
                f"{result['test_nfe_forward']:.1f} evaluations per batch"
            )
        elif kind == "flow":
            from ..training.flow import evaluate as evaluate_flow

            result = evaluate_flow(args.run_dir, test_samples=args.test_subset)
            text = flow_eval_text(result)
        elif kind == "latent":
            from ..training.latent import evaluate as evaluate_latent

            result = evaluate_latent(args.run_dir)
            text = (
                f"latent ODE, {result['observations']} observations, after {result['iteration']} iterations "
                f"({result['test_samples']} held-out spirals): extrapolation RMSE {result['extrapolation_rmse']:.4f} "
                f"(RNN {result['rnn_extrapolation_rmse']:.4f}), reconstruction RMSE "
                f"{result['reconstruction_rmse']:.4f} (RNN {result['rnn_reconstruction_rmse']:.4f})"
            )
        else:
            from ..training.mnist import evaluate as evaluate_mnist

            result = evaluate_mnist(
                args.run_dir,
                data_dir=args.data_dir,
                device=args.device,
                test_subset=args.test_subset,
                full_test_set=args.full,
            )
            text = (
                f"{result['model']} after {result['epoch']} epoch(s): test error {100 * result['test_error']:.2f}% "
                f"({round(result['test_error'] * result['test_samples'])}/{result['test_samples']} wrong), "
                f"test loss {result['test_loss']:.4f}, {result['params']:,} parameters"
            )
    except (FileNotFoundError, CheckpointError) as exc:
        runtime_error(parser, f"argument RUN_DIR: {exc}")
    except (ValueError, DownloadError) as exc:
        runtime_error(parser, exc, status=1)
    print(json.dumps(result) if args.json else text)
    return 0


def flow_eval_text(result: dict) -> str:
    """A flow run's evaluation as text: the test NLL, then the samples-per-NFE table."""
    bpd = f" ({result['test_bpd']:.4f} bits/dim)" if "test_bpd" in result else ""
    lines = [
        f"flow on {result['dataset']} ({result['coupling']} coupling) after {result['iteration']} iterations: test NLL "
        f"{result['test_nll']:.4f} nats{bpd} on {result['test_samples']:,} held-out samples ({result['divergence']} divergence, "
        f"{result['test_nfe_forward']:.1f} evaluations per batch)",
        f"samples per NFE (2-Wasserstein distance to held-out data; data against data: {result['w2_floor']:.4f}):",
        f"  {'method':<9} {'steps':>5} {'rtol':>6} {'NFE':>5} {'W2':>8} {'seconds':>8}",
    ]
    for r in result["sampling"]:
        steps = "" if r["steps"] is None else r["steps"]
        rtol = "" if r["rtol"] is None else f"{r['rtol']:g}"
        lines.append(f"  {r['method']:<9} {steps:>5} {rtol:>6} {r['nfe']:>5} {r['w2']:>8.4f} {r['seconds']:>8.3f}")
    return "\n".join(lines)


def add_plot(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="learning curves of a training run (any task) as a PNG; a flow run's samples too",
        description="Draw RUN_DIR/metrics.jsonl (losses, scores and NFE per logging interval) into RUN_DIR/learning_curves.png. "
        "For a flow run also draw, from its checkpoint, samples beside held-out data (samples.png), a few "
        "particles' trajectories (trajectories.png) and sample quality against NFE (quality_vs_nfe.png).",
        epilog="example: neuralode plot runs/odenet",
    )
    parser.add_argument("run_dir", type=path_arg, metavar="RUN_DIR", help="a folder written by 'neuralode train'")
    parser.add_argument(
        "--output",
        type=path_arg,
        default=None,
        metavar="PATH",
        help="where to write the figure (default: RUN_DIR/learning_curves.png)",
    )
    parser.set_defaults(handler=run_plot, subparser=parser)


def run_plot(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..training.figures import CURVES_NAME, draw_run, run_kind

    if not args.run_dir.is_dir():
        parser.error(f"argument RUN_DIR: {str(args.run_dir)!r} is not a directory")
    if args.output is not None and not args.output.parent.is_dir():
        parser.error(f"argument --output: folder {str(args.output.parent)!r} does not exist")
    if args.output is not None and not args.output.suffix:
        parser.error(
            f"argument --output: {str(args.output)!r} has no suffix to take the format from; end it in .png (or .pdf, .svg)"
        )
    try:
        figure = draw_run(args.run_dir)
    except (FileNotFoundError, ValueError) as exc:
        runtime_error(parser, f"argument RUN_DIR: {exc}")
    from ..plotting import save_figure

    path = args.output if args.output is not None else args.run_dir / CURVES_NAME
    try:
        save_figure(figure, path)
    except (OSError, ValueError) as exc:  # an unknown format is matplotlib's ValueError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        runtime_error(
            parser, f"{'argument --output: ' if args.output is not None else ''}cannot write {str(path)!r}: {reason}"
        )
    paths = [path]
    if run_kind(args.run_dir) == "flow":  # samples, trajectories and quality against NFE, from the checkpoint
        from ..training.checkpoints import CheckpointError
        from ..training.flow import plot_saved_run

        try:
            paths += plot_saved_run(args.run_dir)
        except (FileNotFoundError, CheckpointError, ValueError) as exc:
            runtime_error(parser, f"argument RUN_DIR: {exc}")
    print("\n".join(map(str, paths)))
    return 0
