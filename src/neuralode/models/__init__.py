"""The paper's architectures: MNIST classifiers (Table 1); latent ODEs and CNFs live beside them."""

from .classifiers import (
    MODEL_NAMES,
    ConvODEFunc,
    ResBlock,
    build_classifier,
    count_parameters,
)

__all__ = ["MODEL_NAMES", "ConvODEFunc", "ResBlock", "build_classifier", "count_parameters"]
