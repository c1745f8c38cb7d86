"""MNIST from the standard IDX files: an own parser, a checksummed downloader and a tensor dataset.

No torchvision. Three layers, each usable alone:

* :func:`parse_idx` / :func:`read_idx_file`: the IDX format (LeCun's: a 4-byte magic number
  ``0x00 0x00 <dtype> <ndim>``, ``ndim`` big-endian ``int32`` sizes, then the data, big-endian),
  gzip-compressed or raw. The header is checked against the file's length, so a truncated file is
  an error, never a silently short array.
* :func:`load_mnist`: one split as ``(images uint8 (N, 28, 28), labels int64 (N,))``. With
  ``data_dir`` it reads that folder and never touches the network; without, it uses a cache folder
  and downloads whatever is missing from a list of mirrors, with retries, SHA-256 verification of the
  uncompressed payload and atomic writes. Every file, read or downloaded, is checked for shape,
  label range and (by default) the standard checksum, so a wrong dataset never loads quietly.
* :class:`MNISTDataset`: normalised ``float32`` batches, optionally with the paper's augmentation
  (pad by 4, random 28x28 crop), whose randomness is a pure function of ``(seed, epoch, sample)``:
  the same sample gets the same crop however the data are sharded or batched, which is what makes
  resumed and data-parallel runs reproduce single-process ones exactly.

Checksums are of the *uncompressed* payloads: different mirrors gzip the same bytes differently.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._atomic import atomic_write_bytes

__all__ = [
    "MNIST_FILES",
    "MNIST_SHA256",
    "MNIST_SIZES",
    "DEFAULT_MIRRORS",
    "DATA_ENV",
    "MIRRORS_ENV",
    "MNIST_MEAN",
    "MNIST_STD",
    "DownloadError",
    "parse_idx",
    "read_idx_file",
    "default_cache_dir",
    "default_mirrors",
    "download_mnist",
    "load_mnist",
    "epoch_generator",
    "MNISTDataset",
    "mnist_dataset",
]

#: The two files of each split, without the ``.gz`` suffix.
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: SHA-256 of each standard file's uncompressed payload.
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

#: Samples per split.
MNIST_SIZES: dict[str, int] = {"train": 60_000, "test": 10_000}

#: Where the files are fetched from, in order: PyTorch's S3 copy (what torchvision uses first; the
#: original site has rate-limited and required logins at times), then the original.
DEFAULT_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

#: Environment variables: the data root (the cache is ``$NEURALODE_DATA/mnist``) and a
#: comma-separated mirror list that replaces :data:`DEFAULT_MIRRORS`.
DATA_ENV = "NEURALODE_DATA"
MIRRORS_ENV = "NEURALODE_MNIST_MIRRORS"

#: Mean and standard deviation of the training pixels scaled to [0, 1]: the usual normalisation.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# IDX type codes -> big-endian NumPy dtypes (the format's full table, though MNIST uses 0x08 only).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MAGIC_IMAGES = 0x00000803  # uint8, 3 dimensions
_MAGIC_LABELS = 0x00000801  # uint8, 1 dimension


class DownloadError(RuntimeError):
    """No mirror delivered a file that passed verification; the message lists every attempt."""


# --------------------------------------------------------------------------------------------
# The IDX format.


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse one uncompressed IDX file.

    Args:
        data: the file's bytes.
        source: a name for error messages (usually the file's path).

    Returns:
        A NumPy array with the header's shape and dtype (native byte order).

    Raises:
        ValueError: if the magic number is malformed or the length disagrees with the header.
    """
    if len(data) < 4:
        raise ValueError(f"{source}: too short to be an IDX file ({len(data)} bytes; the header alone is at least 8).")
    zero, dtype_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    magic = int.from_bytes(data[:4], "big")
    if zero != 0 or dtype_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{source}: not an IDX file: magic number 0x{magic:08x} is not of the form 0x0000TTNN "
            f"(TT a type code in {{08, 09, 0b, 0c, 0d, 0e}}, NN >= 1 dimensions)."
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: truncated IDX header: {len(data)} bytes, the header needs {header}.")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = header + dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise ValueError(
            f"{source}: {what}: the IDX header declares shape {shape} ({expected} bytes in all) "
            f"but the file has {len(data)} bytes."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _read_payload(path: Path) -> bytes:
    """The file's bytes, gunzipped if it starts with the gzip magic; errors name the file."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise ValueError(
            f"{path}: truncated or corrupt gzip data ({exc}). Delete the file and download it again."
        ) from None


def read_idx_file(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, gzip-compressed (detected by its magic bytes) or raw; see :func:`parse_idx`."""
    path = Path(path)
    return parse_idx(_read_payload(path), source=str(path))


# --------------------------------------------------------------------------------------------
# Finding, verifying and downloading the files.


def default_cache_dir() -> Path:
    """``$NEURALODE_DATA/mnist`` if the variable is set, else ``~/.cache/neuralode/mnist``."""
    root = os.environ.get(DATA_ENV)
    return Path(root).expanduser() / "mnist" if root else Path.home() / ".cache" / "neuralode" / "mnist"


def default_mirrors() -> tuple[str, ...]:
    """The mirrors in ``$NEURALODE_MNIST_MIRRORS`` (comma-separated), else :data:`DEFAULT_MIRRORS`."""
    value = os.environ.get(MIRRORS_ENV, "").strip()
    if not value:
        return DEFAULT_MIRRORS
    return tuple(m.strip() for m in value.split(",") if m.strip())


def _find(folder: Path, name: str) -> Path | None:
    """``folder/name.gz`` or ``folder/name`` (uncompressed), whichever exists, gzip first."""
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _check_array(array: np.ndarray, name: str, split: str, source: str) -> None:
    """Raise ValueError unless ``array`` has the shape and range of the standard MNIST ``name``."""
    n = MNIST_SIZES[split]
    expected_shape: tuple[int, ...]
    if name.endswith("images-idx3-ubyte"):
        expected_shape, kind = (n, 28, 28), "images"
    else:
        expected_shape, kind = (n,), "labels"
    if array.dtype != np.uint8 or array.shape != expected_shape:
        raise ValueError(
            f"{source}: not the MNIST {split} {kind}: expected uint8 of shape {expected_shape}, "
            f"found {array.dtype} of shape {array.shape}."
        )
    if kind == "labels" and array.max(initial=0) > 9:
        raise ValueError(f"{source}: labels must lie in 0..9; found {int(array.max())}.")


def _verify_payload(payload: bytes, name: str, split: str, source: str, verify: bool) -> np.ndarray:
    """Parse ``payload`` as the MNIST file ``name`` and check it; returns the array."""
    # The magic number first: a labels file read as images (or the reverse) would otherwise be
    # parsed with the wrong number of dimensions and reported as truncated.
    expected_magic = _MAGIC_IMAGES if "images" in name else _MAGIC_LABELS
    magic = int.from_bytes(payload[:4], "big")
    if magic != expected_magic:
        kind = "images" if "images" in name else "labels"
        other = {_MAGIC_IMAGES: " (it is an MNIST images file)", _MAGIC_LABELS: " (it is an MNIST labels file)"}.get(
            magic, ""
        )
        raise ValueError(
            f"{source}: wrong IDX magic number 0x{magic:08x} for MNIST {kind} (expected 0x{expected_magic:08x}){other}; "
            f"is this the right file?"
        )
    array = parse_idx(payload, source=source)
    _check_array(array, name, split, source)
    if verify:
        digest = hashlib.sha256(payload).hexdigest()
        if digest != MNIST_SHA256[name]:
            raise ValueError(
                f"{source}: SHA-256 of the uncompressed data is {digest}, expected {MNIST_SHA256[name]} "
                f"for the standard MNIST {name}. The file is corrupt or not the standard MNIST: delete it "
                f"and download it again (or pass verify=False to load another dataset in the same format)."
            )
    return array


def _fetch(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) mirrors only
        return response.read()


def _download_file(
    name: str,
    split: str,
    folder: Path,
    mirrors: Sequence[str],
    *,
    retries: int,
    timeout: float,
    backoff: float,
) -> Path:
    """Download ``name.gz`` into ``folder`` from the first mirror whose copy verifies."""
    failures: list[str] = []
    for mirror in mirrors:
        url = mirror if mirror.endswith("/") else mirror + "/"
        url += f"{name}.gz"
        for attempt in range(1, retries + 1):
            try:
                raw = _fetch(url, timeout)
            except urllib.error.HTTPError as exc:
                # 4xx will not change on a retry; 5xx and timeouts may.
                failures.append(f"{url}: HTTP {exc.code} {exc.reason} (attempt {attempt})")
                if exc.code < 500:
                    break
            except (
                urllib.error.URLError,
                OSError,
                http.client.HTTPException,
            ) as exc:  # refused, reset, timeout, cut short
                reason = getattr(exc, "reason", exc)
                failures.append(f"{url}: {reason} (attempt {attempt})")
            else:
                try:
                    payload = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
                    _verify_payload(payload, name, split, url, verify=True)
                except (EOFError, OSError, zlib.error, ValueError) as exc:
                    # A mirror serving bad bytes serves them again: go to the next one.
                    failures.append(f"{exc}" if str(exc).startswith(url) else f"{url}: {exc}")
                    warnings.warn(f"MNIST download: rejected {url}: {failures[-1]}", RuntimeWarning, stacklevel=4)
                    break
                target = folder / f"{name}.gz"
                # Store exactly what verified, gzipped, whatever the mirror sent.
                atomic_write_bytes(target, raw if raw[:2] == b"\x1f\x8b" else gzip.compress(raw))
                return target
            if attempt < retries and backoff > 0:
                time.sleep(backoff * 2 ** (attempt - 1))
    details = "\n  ".join(failures) if failures else "(no mirrors were given)"
    raise DownloadError(
        f"Could not download MNIST file {name}.gz from any mirror:\n  {details}\n"
        f"Download the four MNIST files yourself into {folder} (or any folder and pass it as data_dir / "
        f"--data-dir), or set {MIRRORS_ENV} to a comma-separated list of mirrors."
    )


def download_mnist(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    splits: Sequence[str] = ("train", "test"),
    mirrors: Sequence[str] | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> Path:
    """Make sure ``cache_dir`` holds verified copies of the MNIST files, downloading what is missing.

    A cached file that fails verification is downloaded again (with a warning).

    Args:
        cache_dir: target folder (created); :func:`default_cache_dir` by default.
        splits: which of ``"train"``, ``"test"``.
        mirrors: base URLs tried in order (each + ``"<name>.gz"``); :func:`default_mirrors` by default.
        retries: attempts per mirror for transient failures (network errors, HTTP 5xx).
        timeout: seconds per request.
        backoff: seconds before the second attempt, doubling after each further failure.

    Returns:
        The cache folder.

    Raises:
        DownloadError: if some file could not be fetched and verified from any mirror.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    mirrors = tuple(mirrors) if mirrors is not None else default_mirrors()
    if retries < 1:
        raise ValueError(f"retries must be at least 1; got {retries}.")
    for split in splits:
        for name in MNIST_FILES[_split(split)]:
            path = _find(folder, name)
            if path is not None:
                try:
                    _load_file(path, name, split, verify=True)
                    continue
                except ValueError as exc:
                    warnings.warn(f"{exc} Downloading it again.", RuntimeWarning, stacklevel=2)
            _download_file(name, split, folder, mirrors, retries=retries, timeout=timeout, backoff=backoff)
    return folder


def _split(split: str) -> str:
    if split not in MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
    return split


# Parsed files, keyed by (path, size, mtime, verify): loading the same split twice in one process
# (a training run's evaluation, a test suite) costs one decompression, not two.
_CACHE: dict[tuple[str, int, int, bool], np.ndarray] = {}


def _load_file(path: Path, name: str, split: str, *, verify: bool) -> np.ndarray:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, verify)
    if key not in _CACHE:
        payload = _read_payload(path)
        array = _verify_payload(payload, name, split, str(path), verify)
        array.setflags(write=False)
        if len(_CACHE) >= 8:
            _CACHE.clear()
        _CACHE[key] = array
    return _CACHE[key]


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    train: bool = True,
    download: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    mirrors: Sequence[str] | None = None,
    verify: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one MNIST split.

    Args:
        data_dir: a folder holding the IDX files (``<name>.gz`` or uncompressed ``<name>``). Given,
            it is the only place looked in and nothing is downloaded.
        train: the 60,000 training samples, else the 10,000 test samples.
        download: without ``data_dir``, fetch files missing from the cache (else raise).
        cache_dir: the cache folder; :func:`default_cache_dir` by default.
        mirrors, retries, timeout: see :func:`download_mnist`.
        verify: check the standard SHA-256 of each payload (turn off only to read another dataset
            in MNIST's format, e.g. Fashion-MNIST under MNIST's file names).

    Returns:
        ``(images, labels)``: ``uint8`` of shape ``(N, 28, 28)`` and ``int64`` of shape ``(N,)``.

    Raises:
        FileNotFoundError: a file is missing (from ``data_dir``, or from the cache with
            ``download=False``); the message names it and what to do.
        ValueError: a file is truncated, corrupt, the wrong file or fails its checksum.
        DownloadError: downloading failed from every mirror.
    """
    split = "train" if train else "test"
    names = MNIST_FILES[split]
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"MNIST data folder {str(folder)!r} does not exist. Name a folder holding the four IDX files "
                f"({', '.join(n + '.gz' for s in MNIST_FILES.values() for n in s)}), or leave data_dir out "
                f"to download them into the cache."
            )
        paths = []
        for name in names:
            path = _find(folder, name)
            if path is None:
                raise FileNotFoundError(
                    f"MNIST file {name}.gz (or uncompressed {name}) not found in {folder}. Put the standard "
                    f"MNIST files there, or leave data_dir out to download them into the cache."
                )
            paths.append(path)
    else:
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        if download:
            download_mnist(folder, splits=(split,), mirrors=mirrors, retries=retries, timeout=timeout)
        paths = []
        for name in names:
            path = _find(folder, name)
            if path is None:
                raise FileNotFoundError(
                    f"MNIST file {name}.gz not found in the cache {folder} and download=False. "
                    f"Allow the download, or pass data_dir naming a folder that holds the MNIST files."
                )
            paths.append(path)
    images = _load_file(paths[0], names[0], split, verify=verify)
    labels = _load_file(paths[1], names[1], split, verify=verify)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


# --------------------------------------------------------------------------------------------
# Normalised tensors, augmentation and subsets.


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A ``torch.Generator`` that depends only on ``(seed, epoch, stream)``.

    NumPy's ``SeedSequence`` mixes the three so neighbouring seeds and epochs give unrelated
    streams (a plain ``seed + epoch`` would make seed 0 epoch 1 equal seed 1 epoch 0).
    """
    state = np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


class MNISTDataset(torch.utils.data.Dataset):
    """MNIST as normalised ``float32`` tensors, with optional random-crop augmentation.

    ``dataset[i]`` is ``(image (1, 28, 28) float32, label int64)``; :meth:`batch` does the same
    for many indices at once, vectorised (what the training loop uses).

    Augmentation is the paper's: zero-pad to 36x36 and crop a random 28x28 window (torchvision's
    ``RandomCrop(28, padding=4)``). Each sample's crop offset is drawn per epoch from
    :func:`epoch_generator` ``(seed, epoch)``, indexed by the sample, so it does not depend on
    batch composition, order, sharding or worker processes. Call :meth:`set_epoch` before each epoch.

    Args:
        images: ``uint8`` of shape ``(N, 28, 28)``.
        labels: integer labels of shape ``(N,)``.
        augment: random crops (training) or none (evaluation).
        seed: seeds the crops.
        normalize: subtract :data:`MNIST_MEAN` and divide by :data:`MNIST_STD` after scaling to
            [0, 1]; otherwise return [0, 1] pixels (the paper's reference code).
    """

    _CROP_STREAM = 1

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        augment: bool = False,
        seed: int = 0,
        normalize: bool = True,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 3 or tuple(images.shape[1:]) != (28, 28):
            raise ValueError(f"images must be uint8 of shape (N, 28, 28); got {images.dtype} {tuple(images.shape)}.")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({images.shape[0]},); got {tuple(labels.shape)}.")
        self.images = images
        self.labels = labels.long()
        self.augment = augment
        self.seed = seed
        self.normalize = normalize
        self.epoch = 0
        self._offsets: torch.Tensor | None = None  # (N, 2) crop corners for self.epoch
        self.set_epoch(0)

    def __len__(self) -> int:
        return self.images.shape[0]

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's crop offsets (a no-op without augmentation)."""
        self.epoch = epoch
        if self.augment:
            gen = epoch_generator(self.seed, epoch, self._CROP_STREAM)
            self._offsets = torch.randint(0, 9, (len(self), 2), generator=gen)  # top, left in 0..8

    def batch(self, indices: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B, 1, 28, 28) float32`` and labels ``(B,) int64`` for ``indices``."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        images = self.images[idx]  # (B, 28, 28) uint8
        if self.augment:
            assert self._offsets is not None
            padded = F.pad(images, (4, 4, 4, 4))  # (B, 36, 36)
            top, left = self._offsets[idx, 0], self._offsets[idx, 1]  # (B,)
            ar = torch.arange(28)
            rows = (top[:, None] + ar)[:, :, None]  # (B, 28, 1)
            cols = (left[:, None] + ar)[:, None, :]  # (B, 1, 28)
            images = padded[torch.arange(idx.numel())[:, None, None], rows, cols]  # (B, 28, 28)
        x = images.unsqueeze(1).float().div_(255.0)  # (B, 1, 28, 28)
        if self.normalize:
            x = x.sub_(MNIST_MEAN).div_(MNIST_STD)
        return x, self.labels[idx]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch([index])
        return x[0], y[0]


def mnist_dataset(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    train: bool = True,
    augment: bool = False,
    subset: int | None = None,
    seed: int = 0,
    normalize: bool = True,
    **load_kwargs,
) -> MNISTDataset:
    """Load a split (see :func:`load_mnist`) as an :class:`MNISTDataset`.

    Args:
        subset: keep the first ``subset`` samples (all by default). MNIST's files are not sorted by
            label, so a prefix is close to class-balanced and the same on every machine.
        **load_kwargs: ``download``, ``cache_dir``, ``mirrors``, ``verify``, ... for :func:`load_mnist`.

    Raises:
        ValueError: if ``subset`` is not between 1 and the split's size.
    """
    images, labels = load_mnist(data_dir, train=train, **load_kwargs)
    if subset is not None:
        if not 1 <= subset <= images.shape[0]:
            split = "train" if train else "test"
            raise ValueError(f"subset must be between 1 and {images.shape[0]} for the {split} split; got {subset}.")
        images, labels = images[:subset], labels[:subset]
    return MNISTDataset(images, labels, augment=augment, seed=seed, normalize=normalize)
