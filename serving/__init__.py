"""Serving: TF Serving configuration and clients, an onnxruntime server with the same APIs,
and load tests.

Modules (run the CLIs with `python -m serving.<module> --help`):

    serving.tf_serving_config   models.config + batching parameters for tensorflow_model_server,
                                and a check of the export layout TF Serving expects
    serving.onnx_server         onnxruntime server with TF Serving's REST and gRPC APIs
    serving.client              `ServingClient` (REST or gRPC) and its CLI
    serving.loadtest            bounded concurrent load test, JSON report
    serving.soak                bounded soak test: load while versions change and the server
                                is killed and restarted

Nothing here imports `training` or `export`, and the server and clients do not import
TensorFlow (the TF Serving protos are loaded without it, see `serving._protos`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServingClient", "ServingError", "load_inputs"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import serving` stays cheap.
    if name in __all__:
        from serving import client

        return getattr(client, name)
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
