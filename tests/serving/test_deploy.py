"""The Kubernetes manifests under `serving/deploy/` parse and agree with the servers.

The onnxruntime server is started with the manifest's own arguments (export path, host and
ports swapped for the test's export and free loopback ports) and its probe paths must answer
200 on the port the probes name. The TF Serving manifest is checked against TF Serving's flags
(no model server binary here): probe ports are the ports it is told to bind, and the readiness
path is the status URL of the model it is told to serve.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from _serving_helpers import ROOT, ExportInfo, copy_export, env, free_port, run_server

DEPLOY = ROOT / "serving" / "deploy"
pytestmark = pytest.mark.timeout(300)


def _load(name: str) -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all((DEPLOY / name).read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert sorted(kinds) == ["Deployment", "Service"], name
    return kinds["Deployment"], kinds["Service"]


def _container(deployment: dict) -> dict:
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["replicas"] >= 2
    (container,) = spec["template"]["spec"]["containers"]
    return container


def _port_of(container: dict, ref: int | str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    return ports[ref] if isinstance(ref, str) else ref


def _check_service(service: dict, deployment: dict, container: dict) -> None:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    names = {p["name"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in names, port


def _flag(args: list[str], flag: str) -> str:
    for i, arg in enumerate(args):
        if arg == flag:
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{flag} not in {args}")


def _without(args: list[str], *flags: str) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        else:
            out.append(arg)
    return out


def test_onnx_server_manifest_probes_what_the_server_serves(
    export_info: ExportInfo, tmp_path: Path
) -> None:
    deployment, service = _load("onnx-server.yaml")
    container = _container(deployment)
    _check_service(service, deployment, container)
    assert container["command"] == ["python", "-m", "serving.onnx_server"]
    args = [str(a) for a in container["args"]]
    assert _flag(args, "--host") == "0.0.0.0"  # reachable by the kubelet and the Service
    rest, grpc = int(_flag(args, "--port")), int(_flag(args, "--grpc-port"))
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "rest": rest,
        "grpc": grpc,
    }
    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert _port_of(container, ready["port"]) == rest == _port_of(container, live["port"])
    mount = container["volumeMounts"][0]["mountPath"]
    assert args[0].startswith(mount + "/")

    # The server with the manifest's other arguments answers both probe paths with 200.
    base = copy_export(export_info, tmp_path / export_info.name)
    extra = _without(args[1:], "--host", "--port", "--grpc-port")
    with run_server(base, export_info.name, tmp_path / "server.log", *extra) as srv:
        for probe in (ready, live):
            r = httpx.get(srv.url + probe["path"], timeout=10)
            assert r.status_code == 200, (probe, r.text)


def test_readiness_fails_without_a_model(tmp_path: Path) -> None:
    """Readiness waits for a model version; liveness does not."""
    deployment, _ = _load("onnx-server.yaml")
    container = _container(deployment)
    ready = container["readinessProbe"]["httpGet"]["path"]
    empty = tmp_path / "empty"
    empty.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.onnx_server", str(empty), "--port", str(port),
         "--grpc-port", "0"],
        cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}{ready}", timeout=5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
                time.sleep(0.2)
        assert r.status_code == 503, r.text
        live = container["livenessProbe"]["httpGet"]["path"]
        assert httpx.get(f"http://127.0.0.1:{port}{live}", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)


def test_tf_serving_manifest_matches_its_flags() -> None:
    deployment, service = _load("tf-serving.yaml")
    container = _container(deployment)
    _check_service(service, deployment, container)
    args = [str(a) for a in container["args"]]
    rest, grpc = int(_flag(args, "--rest_api_port")), int(_flag(args, "--port"))
    name, base = _flag(args, "--model_name"), _flag(args, "--model_base_path")
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "rest": rest,
        "grpc": grpc,
    }
    ready = container["readinessProbe"]["httpGet"]
    assert ready["path"] == f"/v1/models/{name}"  # TF Serving's model status API
    assert _port_of(container, ready["port"]) == rest
    assert _port_of(container, container["livenessProbe"]["tcpSocket"]["port"]) == grpc
    assert base.startswith(container["volumeMounts"][0]["mountPath"] + "/")
