"""scikit-learn's 8x8 handwritten digits (UCI "optdigits" test set): 1,797 images, no download.

Each image is 8x8 pixels with 17 grey levels (0..16), ten classes. The data ships inside
scikit-learn's wheel, so it suits tests and CPU benchmarks of image flows; scikit-learn is an
optional dependency (``pip install 'neuralode[digits]'``), imported only here and only when the
digits are asked for.

The split is fixed: the last :data:`DIGITS_TEST` images of scikit-learn's order are the test set
(the rest, 1,497, train), so every run and benchmark scores on the same held-out digits.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["DIGITS_LEVELS", "DIGITS_SHAPE", "DIGITS_TEST", "load_digits"]

#: Grey levels of a pixel (values 0..16).
DIGITS_LEVELS = 17
#: One image: one channel of 8x8.
DIGITS_SHAPE = (1, 8, 8)
#: Images held out for testing (the last ones).
DIGITS_TEST = 300


def load_digits(*, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of the digits.

    Args:
        train: the first 1,497 images, else the last 300.

    Returns:
        ``(images, labels)``: ``uint8`` of shape ``(N, 1, 8, 8)`` with values 0..16, and ``int64`` ``(N,)``.

    Raises:
        ImportError: scikit-learn is not installed; the message gives the install command.
    """
    images, labels = _all_digits()
    cut = images.shape[0] - DIGITS_TEST
    return (images[:cut], labels[:cut]) if train else (images[cut:], labels[cut:])


@functools.cache
def _all_digits() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits as sk_load_digits  # type: ignore[import-untyped]  # sklearn: no stubs
    except ImportError as exc:
        raise ImportError(
            "the digits dataset is scikit-learn's bundled 8x8 digits, and scikit-learn is not installed; "
            "install it with: pip install 'neuralode[digits]' (or pip install scikit-learn)"
        ) from exc
    data = sk_load_digits()
    images = torch.from_numpy(data.images).to(torch.uint8).reshape(-1, *DIGITS_SHAPE)  # (1797, 1, 8, 8)
    labels = torch.from_numpy(data.target).to(torch.int64)
    return images, labels
