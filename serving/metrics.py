"""Prometheus metrics of the onnxruntime server, in TF Serving's manner.

TF Serving serves its metrics at `/monitoring/prometheus/metrics` (with
`--monitoring_config_file` enabling `prometheus_config { enable: true }`), named with its
`:tensorflow:serving:` prefix. This server exposes the same path and prefix with
prometheus-client:

    :tensorflow:serving:request_count_total{model_name, model_version, signature_name, API,
                                            entrypoint, status}
    :tensorflow:serving:request_latency_bucket{model_name, API, entrypoint, le}  (microseconds)
    :tensorflow:serving:runtime_latency_bucket{model_name, signature_name, le}   (microseconds)
    :tensorflow:serving:batching_session:processed_batch_size_bucket{model_name,
                                            signature_name, le}
    :tensorflow:serving:onnx_session_run_count_total{model_name, signature_name, graph}
    :tensorflow:serving:model_load_count_total{model_name, model_version, status}
    :tensorflow:serving:model_unload_count_total{model_name, model_version}
    :tensorflow:serving:model_versions_available{model_name}

`API` is `predict`, `metadata` or `status`; `entrypoint` is `REST` or `GRPC`; `status` is the
canonical code name (`OK`, `INVALID_ARGUMENT`, ...); `graph` the ONNX file a session run used
(`model.onnx`, `model_fixed.onnx`, `model_streaming.onnx`; not a TF Serving metric). Each
server owns its registry, so several servers in one process do not mix their counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "METRICS_PATH", "ServerMetrics"]

METRICS_PATH = "/monitoring/prometheus/metrics"
CONTENT_TYPE = CONTENT_TYPE_LATEST
_PREFIX = ":tensorflow:serving:"
# Microsecond buckets from 10 us to about 10 s (TF Serving's request_latency is in us too).
_LATENCY_BUCKETS_US = tuple(10 * 2 ** i for i in range(21))
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    """The metrics of one server.

    Args:
        model_name: the served model's name (a label on every metric).

    Example:

    >>> m = ServerMetrics("ecg")
    >>> m.request("predict", "REST", 1, "serving_default", "OK", 0.002)
    >>> b":tensorflow:serving:request_count_total" in m.render()
    True
    """

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter(
            _PREFIX + "request_count", "Requests by model, version, signature, API, entrypoint "
            "and status.", ["model_name", "model_version", "signature_name", "API", "entrypoint",
                            "status"], registry=r)
        self._latency = Histogram(
            _PREFIX + "request_latency", "Request latency in microseconds (receipt to "
            "response, body decode included).", ["model_name", "API", "entrypoint"],
            buckets=_LATENCY_BUCKETS_US, registry=r)
        self._runtime = Histogram(
            _PREFIX + "runtime_latency", "onnxruntime session run latency in microseconds, "
            "per (merged) batch.", ["model_name", "signature_name"],
            buckets=_LATENCY_BUCKETS_US, registry=r)
        self._batch = Histogram(
            _PREFIX + "batching_session:processed_batch_size", "Examples per session run.",
            ["model_name", "signature_name"], buckets=_BATCH_BUCKETS, registry=r)
        self._graph_runs = Counter(
            _PREFIX + "onnx_session_run_count", "Session runs by signature and ONNX file.",
            ["model_name", "signature_name", "graph"], registry=r)
        self._loads = Counter(
            _PREFIX + "model_load_count", "Version load attempts by status (OK or ERROR).",
            ["model_name", "model_version", "status"], registry=r)
        self._unloads = Counter(
            _PREFIX + "model_unload_count", "Versions retired.", ["model_name",
                                                                  "model_version"], registry=r)
        self._available = Gauge(
            _PREFIX + "model_versions_available", "Versions loaded and serving.",
            ["model_name"], registry=r)
        self._available.labels(model_name).set(0)

    def request(self, api: str, entrypoint: str, version: int | None, signature: str,
                status: str, seconds: float) -> None:
        """Count one request and observe its latency.

        Args:
            api: `predict`, `metadata` or `status`.
            entrypoint: `REST` or `GRPC`.
            version: the version that answered (None: not resolved).
            signature: the signature name ("" if not resolved).
            status: canonical code name.
            seconds: latency.
        """
        v = "" if version is None else str(version)
        self._requests.labels(self.model_name, v, signature, api, entrypoint, status).inc()
        self._latency.labels(self.model_name, api, entrypoint).observe(seconds * 1e6)

    def batch(self, signature: str, size: int, seconds: float, graph: str = "") -> None:
        """Observe one session run of `size` examples that took `seconds` (of file `graph`)."""
        if graph:
            self._graph_runs.labels(self.model_name, signature, graph).inc()
        self._batch.labels(self.model_name, signature).observe(size)
        self._runtime.labels(self.model_name, signature).observe(seconds * 1e6)

    def version_event(self, kind: str, version: int, status: str) -> None:
        """Count a load (`kind="load"`, status "ok"/"error") or an unload."""
        if kind == "load":
            self._loads.labels(self.model_name, str(version), status.upper()).inc()
        else:
            self._unloads.labels(self.model_name, str(version)).inc()

    def set_available(self, count: int) -> None:
        """Set the number of versions loaded."""
        self._available.labels(self.model_name).set(count)

    def render(self) -> bytes:
        """The metrics in Prometheus' text exposition format."""
        return generate_latest(self.registry)
