"""Atomic writes for the serving tools, from `keras_nrnn.io_utils`, without importing Keras.

`keras_nrnn/__init__.py` imports Keras (and so TensorFlow); `keras_nrnn/io_utils.py` itself is
stdlib only. The serving tools must run without TensorFlow, so when `keras_nrnn` is not
imported yet this module loads `io_utils.py` from the package folder by file location,
without executing the package `__init__`.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

__all__ = ["atomic_write_bytes", "atomic_write_text", "io_utils"]


def _load() -> ModuleType:
    if "keras_nrnn" in sys.modules:
        from keras_nrnn import io_utils as mod

        return mod
    spec = importlib.util.find_spec("keras_nrnn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("Package `keras_nrnn` (for keras_nrnn/io_utils.py) was not found.")
    import os

    path = os.path.join(next(iter(spec.submodule_search_locations)), "io_utils.py")
    file_spec = importlib.util.spec_from_file_location("_keras_nrnn_io_utils", path)
    mod = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(mod)
    return mod


io_utils = _load()
atomic_write_bytes = io_utils.atomic_write_bytes
atomic_write_text = io_utils.atomic_write_text
