"""The MNIST loader: IDX parsing, the standard files, every failure's exact message, and downloads
from mirrors served by a local HTTP server (one of them corrupt)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import re
import shutil
import socket
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from neuralode.datasets import mnist
from neuralode.datasets.mnist import (
    MNIST_SHA256,
    DownloadError,
    MNISTDataset,
    download_mnist,
    load_mnist,
    mnist_dataset,
    parse_idx,
    read_idx_file,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
FILES = [f"{n}.gz" for pair in mnist.MNIST_FILES.values() for n in pair]
needs_data = pytest.mark.skipif(
    not all((DATA / f).is_file() for f in FILES),
    reason=f"real MNIST not found in {DATA} (the repository is expected beside shared/data/mnist)",
)

TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    """Encode ``array`` as an IDX file with type code ``code`` (big-endian data)."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(dtype).tobytes()


def payload(name: str) -> bytes:
    return gzip.decompress((DATA / f"{name}.gz").read_bytes())


@pytest.fixture
def data_copy(tmp_path) -> Path:
    """A private copy of the test split (the train split is not needed to exercise the loader)."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in (TEST_IMAGES, TEST_LABELS):
        shutil.copy(DATA / f"{name}.gz", folder / f"{name}.gz")
    return folder


# --------------------------------------------------------------------------------------------
# The IDX format.


@pytest.mark.parametrize("code", [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E])
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4), (1, 2, 1, 3)])
def test_parse_idx_round_trips_every_type_and_rank(code, shape):
    rng = np.random.default_rng(code * 10 + len(shape))
    values = rng.integers(-100, 100, size=shape) if code in (0x09, 0x0B, 0x0C) else rng.integers(0, 255, size=shape)
    if code in (0x0D, 0x0E):
        values = rng.normal(size=shape)
    array = parse_idx(idx_bytes(values, code))
    assert array.shape == shape
    assert array.dtype.isnative
    np.testing.assert_array_equal(array, values.astype(array.dtype))


def test_parse_idx_rejects_a_bad_magic_number():
    with pytest.raises(ValueError) as info:
        parse_idx(b"\x12\x34\x08\x01" + bytes(8), source="f.idx")
    assert str(info.value) == (
        "f.idx: not an IDX file: magic number 0x12340801 is not of the form 0x0000TTNN "
        "(TT a type code in {08, 09, 0b, 0c, 0d, 0e}, NN >= 1 dimensions)."
    )


def test_parse_idx_rejects_truncated_and_overlong_data():
    good = idx_bytes(np.arange(12).reshape(3, 4), 0x08)
    with pytest.raises(ValueError) as info:
        parse_idx(good[:-1], source="f.idx")
    assert (
        str(info.value)
        == "f.idx: truncated: the IDX header declares shape (3, 4) (24 bytes in all) but the file has 23 bytes."
    )
    with pytest.raises(ValueError, match=r"^f.idx: longer than its header says: .* but the file has 25 bytes.$"):
        parse_idx(good + b"\0", source="f.idx")
    with pytest.raises(ValueError, match=r"^f.idx: truncated IDX header: 10 bytes, the header needs 12.$"):
        parse_idx(good[:10], source="f.idx")


# --------------------------------------------------------------------------------------------
# The standard files.


@needs_data
def test_loads_the_standard_files_with_the_documented_counts():
    images, labels = load_mnist(DATA, train=True)
    assert images.shape == (60_000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60_000,) and labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    images, labels = load_mnist(DATA, train=False)
    assert images.shape == (10_000, 28, 28)
    assert torch.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert int(images.max()) == 255 and int(images.min()) == 0


@needs_data
def test_checksums_are_the_ones_shipped_with_the_data():
    listed = dict(line.split()[::-1] for line in (DATA / "sha256sums.txt").read_text().splitlines() if line.strip())
    assert listed == MNIST_SHA256


@needs_data
def test_uncompressed_files_load_too(tmp_path):
    for name in (TEST_IMAGES, TEST_LABELS):
        (tmp_path / name).write_bytes(payload(name))
    images, labels = load_mnist(tmp_path, train=False)
    ref_images, ref_labels = load_mnist(DATA, train=False)
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)
    np.testing.assert_array_equal(read_idx_file(tmp_path / TEST_LABELS), ref_labels.numpy())


# --------------------------------------------------------------------------------------------
# Failures, each with the message a user sees.


def test_missing_folder_and_missing_file(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"MNIST data folder {str(tmp_path / 'nope')!r} does not exist.")
    ):
        load_mnist(tmp_path / "nope", train=False)
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path, train=False)
    assert str(info.value) == (
        f"MNIST file {TEST_IMAGES}.gz (or uncompressed {TEST_IMAGES}) not found in {tmp_path}. Put the standard "
        f"MNIST files there, or leave data_dir out to download them into the cache."
    )


@needs_data
def test_truncated_gzip_names_the_file(data_copy):
    path = data_copy / f"{TEST_IMAGES}.gz"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError) as info:
        load_mnist(data_copy, train=False)
    message = str(info.value)
    assert message.startswith(f"{path}: truncated or corrupt gzip data (")
    assert message.endswith("). Delete the file and download it again.")


@needs_data
def test_truncated_payload_inside_a_valid_gzip(data_copy):
    path = data_copy / f"{TEST_LABELS}.gz"
    path.write_bytes(gzip.compress(payload(TEST_LABELS)[:-10]))
    with pytest.raises(ValueError) as info:
        load_mnist(data_copy, train=False)
    assert str(info.value) == (
        f"{path}: truncated: the IDX header declares shape (10000,) (10008 bytes in all) but the file has 9998 bytes."
    )


@needs_data
def test_wrong_magic_number_names_the_file(data_copy):
    # A labels file (magic 0x801) where the images belong.
    path = data_copy / f"{TEST_IMAGES}.gz"
    shutil.copy(data_copy / f"{TEST_LABELS}.gz", path)
    with pytest.raises(ValueError) as info:
        load_mnist(data_copy, train=False)
    assert str(info.value) == (
        f"{path}: wrong IDX magic number 0x00000801 for MNIST images (expected 0x00000803) (it is an MNIST labels "
        f"file); is this the right file?"
    )


@needs_data
def test_an_images_file_where_the_labels_belong_is_named_not_called_truncated(data_copy):
    path = data_copy / f"{TEST_LABELS}.gz"
    shutil.copy(data_copy / f"{TEST_IMAGES}.gz", path)
    with pytest.raises(ValueError) as info:
        load_mnist(data_copy, train=False)
    assert str(info.value) == (
        f"{path}: wrong IDX magic number 0x00000803 for MNIST labels (expected 0x00000801) (it is an MNIST images "
        f"file); is this the right file?"
    )


@needs_data
def test_wrong_shape_is_not_mnist(data_copy):
    path = data_copy / f"{TEST_LABELS}.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(100, dtype=np.uint8), 0x08)))
    with pytest.raises(ValueError) as info:
        load_mnist(data_copy, train=False)
    assert (
        str(info.value)
        == f"{path}: not the MNIST test labels: expected uint8 of shape (10000,), found uint8 of shape (100,)."
    )


@needs_data
def test_checksum_mismatch_is_refused_unless_verification_is_off(data_copy):
    data = bytearray(payload(TEST_IMAGES))
    data[5000] ^= 0xFF  # one pixel: structurally perfect, silently wrong without the checksum
    path = data_copy / f"{TEST_IMAGES}.gz"
    path.write_bytes(gzip.compress(bytes(data)))
    digest = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(ValueError) as info:
        load_mnist(data_copy, train=False)
    assert str(info.value) == (
        f"{path}: SHA-256 of the uncompressed data is {digest}, expected {MNIST_SHA256[TEST_IMAGES]} "
        f"for the standard MNIST {TEST_IMAGES}. The file is corrupt or not the standard MNIST: delete it "
        f"and download it again (or pass verify=False to load another dataset in the same format)."
    )
    images, _ = load_mnist(data_copy, train=False, verify=False)
    assert images.shape == (10_000, 28, 28)


# --------------------------------------------------------------------------------------------
# Downloads from a local HTTP server.


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files quietly; under ``/cut/`` it promises a whole file and sends half of it."""

    requests: list[str] = []

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        if self.path.startswith("/cut/"):
            body = (Path(self.directory) / "good" / self.path[len("/cut/") :]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(scope="module")
def mirror_server(tmp_path_factory):
    """An HTTP server on 127.0.0.1 (ephemeral port) with three mirrors:

    ``/good/`` a copy of the real files, ``/bad/`` a corrupt test-images file (one byte changed,
    re-gzipped: a valid gzip with the wrong payload) and nothing else, ``/empty/`` nothing.
    Yields the base URL; shut down afterwards.
    """
    if not all((DATA / f).is_file() for f in FILES):
        pytest.skip(f"real MNIST not found in {DATA}")
    root = tmp_path_factory.mktemp("www")
    (root / "good").mkdir()
    (root / "bad").mkdir()
    (root / "empty").mkdir()
    for name in (TEST_IMAGES, TEST_LABELS):
        shutil.copy(DATA / f"{name}.gz", root / "good" / f"{name}.gz")
    data = bytearray(payload(TEST_IMAGES))
    data[1234] ^= 0x55
    (root / "bad" / f"{TEST_IMAGES}.gz").write_bytes(gzip.compress(bytes(data)))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@needs_data
def test_a_download_cut_short_is_retried_then_the_next_mirror_used(mirror_server, tmp_path):
    _QuietHandler.requests.clear()
    download_mnist(
        tmp_path, splits=("test",), mirrors=[f"{mirror_server}/cut/", f"{mirror_server}/good/"], retries=2, backoff=0
    )
    assert _QuietHandler.requests == [
        f"/cut/{TEST_IMAGES}.gz",
        f"/cut/{TEST_IMAGES}.gz",
        f"/good/{TEST_IMAGES}.gz",
        f"/cut/{TEST_LABELS}.gz",
        f"/cut/{TEST_LABELS}.gz",
        f"/good/{TEST_LABELS}.gz",
    ]
    images, _ = load_mnist(tmp_path, train=False)
    assert images.shape == (10_000, 28, 28)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens there any more: connection refused


@needs_data
def test_download_skips_a_corrupt_mirror_and_verifies_the_good_one(mirror_server, tmp_path):
    cache = tmp_path / "cache"
    mirrors = [f"{mirror_server}/bad/", f"{mirror_server}/good"]  # with and without the trailing slash
    with pytest.warns(
        RuntimeWarning, match=r"rejected .*/bad/t10k-images-idx3-ubyte.gz: .*SHA-256 of the uncompressed data is"
    ):
        images, labels = load_mnist(train=False, cache_dir=cache, mirrors=mirrors)
    ref_images, ref_labels = load_mnist(DATA, train=False)
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)
    assert sorted(p.name for p in cache.iterdir()) == [f"{TEST_IMAGES}.gz", f"{TEST_LABELS}.gz"]  # no temp files
    # Now cached: no mirror is needed any more.
    images2, _ = load_mnist(train=False, cache_dir=cache, mirrors=[closed_port_url()], download=True)
    assert torch.equal(images2, ref_images)


@needs_data
def test_download_uses_the_environment(mirror_server, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURALODE_DATA", str(tmp_path / "root"))
    monkeypatch.setenv("NEURALODE_MNIST_MIRRORS", f" {mirror_server}/empty/ , {mirror_server}/good/ ")
    assert mnist.default_cache_dir() == tmp_path / "root" / "mnist"
    assert mnist.default_mirrors() == (f"{mirror_server}/empty/", f"{mirror_server}/good/")
    _, labels = load_mnist(train=False)
    assert labels[:3].tolist() == [7, 2, 1]
    assert (tmp_path / "root" / "mnist" / f"{TEST_LABELS}.gz").is_file()


@needs_data
def test_download_fails_clearly_when_every_mirror_is_bad(mirror_server, tmp_path):
    cache = tmp_path / "cache"
    refused = closed_port_url()
    with pytest.warns(RuntimeWarning):
        with pytest.raises(DownloadError) as info:
            download_mnist(
                cache,
                splits=("test",),
                mirrors=[f"{mirror_server}/bad/", refused, f"{mirror_server}/empty/"],
                retries=2,
                backoff=0,
            )
    message = str(info.value)
    url_bad = f"{mirror_server}/bad/{TEST_IMAGES}.gz"
    lines = message.splitlines()
    assert lines[0] == f"Could not download MNIST file {TEST_IMAGES}.gz from any mirror:"
    assert lines[1].startswith(f"  {url_bad}: SHA-256 of the uncompressed data is ")
    # The refused mirror is retried (transient), the 404 is not (permanent).
    assert re.fullmatch(rf"  {re.escape(refused + TEST_IMAGES)}.gz: .*(refused|Errno).* \(attempt 1\)", lines[2])
    assert lines[3].endswith("(attempt 2)")
    assert lines[4] == f"  {mirror_server}/empty/{TEST_IMAGES}.gz: HTTP 404 File not found (attempt 1)"
    assert lines[5] == (
        f"Download the four MNIST files yourself into {cache} (or any folder and pass it as data_dir / --data-dir), "
        f"or set NEURALODE_MNIST_MIRRORS to a comma-separated list of mirrors."
    )
    assert list(cache.iterdir()) == []  # nothing half-written left behind


@needs_data
def test_a_corrupt_cached_file_is_downloaded_again(mirror_server, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{TEST_LABELS}.gz").write_bytes(b"\x1f\x8b garbage")
    shutil.copy(DATA / f"{TEST_IMAGES}.gz", cache / f"{TEST_IMAGES}.gz")
    with pytest.warns(RuntimeWarning, match="truncated or corrupt gzip data .* Downloading it again."):
        _, labels = load_mnist(train=False, cache_dir=cache, mirrors=[f"{mirror_server}/good/"])
    assert labels.shape == (10_000,)
    # Without permission to download, the same damage is an error.
    (cache / f"{TEST_LABELS}.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ValueError, match=r"truncated or corrupt gzip data"):
        load_mnist(train=False, cache_dir=cache, download=False)


def test_no_download_and_an_empty_cache(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(train=False, cache_dir=tmp_path, download=False)
    assert str(info.value) == (
        f"MNIST file {TEST_IMAGES}.gz not found in the cache {tmp_path} and download=False. "
        f"Allow the download, or pass data_dir naming a folder that holds the MNIST files."
    )


# --------------------------------------------------------------------------------------------
# The dataset: normalisation, augmentation, subsets.


@needs_data
def test_normalised_training_pixels_have_zero_mean_and_unit_variance():
    ds = mnist_dataset(DATA, train=True)
    x, y = ds.batch(torch.arange(0, 60_000, 7))
    assert x.shape == (8572, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01
    raw = mnist_dataset(DATA, train=False, normalize=False)
    x, _ = raw.batch([0])
    images, _ = load_mnist(DATA, train=False)
    assert torch.equal(x[0, 0], images[0].float() / 255)


@needs_data
def test_random_crops_are_shifted_windows_and_a_function_of_seed_epoch_and_sample():
    images, labels = load_mnist(DATA, train=False)
    ds = MNISTDataset(images[:64], labels[:64], augment=True, seed=3, normalize=False)
    ds.set_epoch(5)
    x, _ = ds.batch(torch.arange(64))
    padded = torch.nn.functional.pad(images[:64].float() / 255, (4, 4, 4, 4))
    for i in range(64):
        top, left = ds._offsets[i].tolist()
        assert 0 <= top <= 8 and 0 <= left <= 8
        assert torch.equal(x[i, 0], padded[i, top : top + 28, left : left + 28])
    # Independent of batch composition and order:
    x_rev, _ = ds.batch(torch.arange(63, -1, -1))
    assert torch.equal(x_rev.flip(0), x)
    assert torch.equal(ds[17][0], x[17])
    # A function of (seed, epoch): the same again, different in another epoch or with another seed.
    again = MNISTDataset(images[:64], labels[:64], augment=True, seed=3, normalize=False)
    again.set_epoch(5)
    assert torch.equal(again.batch(torch.arange(64))[0], x)
    again.set_epoch(6)
    assert not torch.equal(again.batch(torch.arange(64))[0], x)
    # Offsets cover all nine positions per axis (128 draws of 9 values, seeded).
    assert set(ds._offsets.flatten().tolist()) == set(range(9))


@needs_data
def test_subset_takes_the_first_samples_and_checks_its_range():
    ds = mnist_dataset(DATA, train=False, subset=10)
    assert len(ds) == 10 and ds.labels.tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    with pytest.raises(
        ValueError, match=re.escape("subset must be between 1 and 10000 for the test split; got 10001.")
    ):
        mnist_dataset(DATA, train=False, subset=10_001)
