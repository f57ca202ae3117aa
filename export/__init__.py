"""Export of keras_nrnn models: noise-free SavedModel (TF Serving), ONNX and TFLite, verified.

`export_model(model_or_path, base_dir)` writes `base_dir/<version>/` with

    saved_model.pb, variables/            SavedModel, signatures serving_default, streaming_step
    assets/metadata.json                  what the export is (export.metadata)
    assets.extra/tf_serving_warmup_requests
    model.onnx                            whole sequence (unrolled for a fixed T by default)
    model_streaming.onnx                  one step: (inputs, state) -> new_state, outputs

built in a temporary folder, verified (export.verify) and renamed into place atomically.
Command line: `python -m export MODEL_OR_RUN_DIR --out EXPORT_BASE`. See export/README.md.
This package never imports `training`.

`export_model` and `next_version` are imported lazily (they pull in TensorFlow), so that
`import export` and the command line's argument checks are instant.
"""

from __future__ import annotations

from typing import Any

from export.errors import ExportError
from export.options import FORMATS

__all__ = ["FORMATS", "ExportError", "export_model", "next_version"]

_LAZY = {"export_model", "next_version"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from export import api

        return getattr(api, name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
