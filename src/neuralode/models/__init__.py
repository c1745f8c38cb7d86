"""Continuous-depth layers and the models built from them: the paper's MNIST classifiers (Table 1), latent ODEs,
CNFs and flow-matching velocity fields."""

from .layers import ConcatConv2d, ConcatLinear, ODEBlock, ODEFunc

__all__ = ["ConcatConv2d", "ConcatLinear", "ODEBlock", "ODEFunc"]

from .classifiers import (
    MODEL_NAMES,
    ConvODEFunc,
    ResBlock,
    build_classifier,
    count_parameters,
)

__all__ += ["MODEL_NAMES", "ConvODEFunc", "ResBlock", "build_classifier", "count_parameters"]

from .latent_ode import ELBOTerms, LatentODE, LatentODEFunc, RecognitionRNN, RNNBaseline

__all__ += ["ELBOTerms", "LatentODE", "LatentODEFunc", "RecognitionRNN", "RNNBaseline"]

from .cnf import CNF, CNFDynamics, ConcatMLP, HyperNetDynamics, build_cnf, standard_normal_logprob

__all__ += ["CNF", "CNFDynamics", "ConcatMLP", "HyperNetDynamics", "build_cnf", "standard_normal_logprob"]

from .flow_matching import (
    COUPLINGS,
    DIVERGENCES,
    MLP_ACTIVATIONS,
    PATHS,
    SampleResult,
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

__all__ += [
    "COUPLINGS",
    "DIVERGENCES",
    "MLP_ACTIVATIONS",
    "PATHS",
    "SampleResult",
    "UNetVelocity",
    "VelocityMLP",
    "bits_per_dim",
    "cfm_loss",
    "log_prob",
    "ot_pairing",
    "path_point",
    "reflow_pairs",
    "sample",
    "wasserstein2",
]
