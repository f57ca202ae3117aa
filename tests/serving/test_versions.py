"""Version changes keep a version serving (TF Serving's availability-preserving policy): a
new version is available before the old one is retired, removing the newest version falls
back to the older one with no failed request, and a poll that cannot list the folder (moved
away, out of descriptors) or finds it empty changes nothing."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from _serving_helpers import ExportInfo, copy_export, run_server, wait_for

from serving.model_repo import ModelRepository


def _served_version(url: str, name: str, x: np.ndarray) -> int | None:
    r = httpx.post(f"{url}/v1/models/{name}:predict", json={"instances": x.tolist()},
                   timeout=10)
    return int(r.headers["x-model-version"]) if r.status_code == 200 else None


class _Load:
    """Background REST and gRPC predict loops that record every failure."""

    def __init__(self, url: str, grpc_target: str, name: str, x: np.ndarray) -> None:
        self.url, self.grpc_target, self.name, self.x = url, grpc_target, name, x
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.sent = 0
        self.versions: set[int] = set()
        self.threads = [threading.Thread(target=self._rest, daemon=True),
                        threading.Thread(target=self._grpc, daemon=True),
                        threading.Thread(target=self._health, daemon=True)]

    def __enter__(self) -> _Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _rest(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.stop.is_set():
                try:
                    r = http.post(f"{self.url}/v1/models/{self.name}:predict",
                                  json={"instances": self.x.tolist()})
                    self.sent += 1
                    if r.status_code != 200:
                        self.failures.append(f"REST {r.status_code} {r.text[:200]}")
                    else:
                        self.versions.add(int(r.headers["x-model-version"]))
                except httpx.HTTPError as err:
                    self.failures.append(f"REST {type(err).__name__}: {err}")

    def _grpc(self) -> None:
        from serving._protos import ndarray_to_tensor_proto, protos

        p = protos()
        req = p.predict_pb2.PredictRequest()
        req.model_spec.name = self.name
        req.inputs["inputs"].CopyFrom(ndarray_to_tensor_proto(self.x))
        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = p.prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not self.stop.is_set():
                try:
                    stub.Predict(req, timeout=10)
                    self.sent += 1
                except grpc.RpcError as err:
                    self.sent += 1
                    self.failures.append(f"gRPC {err.code().name}: {err.details()}")

    def _health(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.stop.wait(0.05):
                try:
                    r = http.get(self.url + "/healthz")
                    if r.status_code != 200:
                        self.failures.append(f"healthz {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as err:
                    self.failures.append(f"healthz {type(err).__name__}: {err}")


def test_version_changes_under_load_fail_nothing(export_info: ExportInfo,
                                                  tmp_path: Path) -> None:
    base = copy_export(export_info, tmp_path / export_info.name)
    shutil.copytree(base / "1", base / "2")
    x = export_info.x[:1]
    with run_server(base, export_info.name, tmp_path / "server.log", "--poll-seconds",
                    "0.2") as srv:
        assert _served_version(srv.url, srv.name, x) == 2
        with _Load(srv.url, srv.grpc, srv.name, x) as load:
            # Remove the newest version: version 2 keeps answering until 1 is loaded.
            shutil.rmtree(base / "2")
            wait_for(lambda: _served_version(srv.url, srv.name, x) == 1, what="fallback to 1")
            # A new version becomes available, then the old one is retired.
            shutil.copytree(base / "1", base / ".tmp-3")
            os.rename(base / ".tmp-3", base / "3")
            wait_for(lambda: _served_version(srv.url, srv.name, x) == 3, what="version 3")
            # The whole base moved away for a while, then back: nothing changes.
            os.rename(base, tmp_path / "moved")
            threading.Event().wait(1.5)
            assert _served_version(srv.url, srv.name, x) == 3
            os.rename(tmp_path / "moved", base)
            # Emptied of version folders for a while: nothing changes either.
            os.rename(base / "1", tmp_path / "v1")
            os.rename(base / "3", tmp_path / "v3")
            threading.Event().wait(1.5)
            assert _served_version(srv.url, srv.name, x) == 3
            os.rename(tmp_path / "v1", base / "1")
            os.rename(tmp_path / "v3", base / "3")
            threading.Event().wait(1.0)
        assert load.sent > 20, load.sent
        assert load.failures == [], load.failures[:5]
        assert {1, 3} <= load.versions, load.versions
        log = srv.log.read_text()
        assert "keeping versions [3]" in log, log[-3000:]
        assert "Traceback" not in log, log[-3000:]


def test_non_ascii_digit_folder_is_ignored_at_start_up(export_info: ExportInfo,
                                                       tmp_path: Path) -> None:
    base = copy_export(export_info, tmp_path / export_info.name)
    shutil.copytree(base / "1", base / "\u00b2")  # SUPERSCRIPT TWO: str.isdigit() is True
    shutil.copytree(base / "1", base / "\u0663")  # ARABIC-INDIC DIGIT THREE
    with run_server(base, export_info.name, tmp_path / "server.log") as srv:
        assert httpx.get(srv.url + "/healthz").json()["versions"] == [1]
        assert _served_version(srv.url, srv.name, export_info.x[:1]) == 1
    log = srv.log.read_text()
    assert "ASCII digits" in log and "Traceback" not in log, log[-3000:]


def _repo(base: Path, **kwargs: object) -> ModelRepository:
    return ModelRepository(base, name="m", inference_threads=1, batching=False, **kwargs)


def test_failed_listing_changes_nothing(export_info: ExportInfo, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    base = copy_export(export_info, tmp_path / "m")
    repo = _repo(base, wait_for_stable=False)
    try:
        assert repo.refresh() == [1]

        def emfile(*args: object, **kwargs: object) -> None:
            raise OSError(errno.EMFILE, "Too many open files")

        with monkeypatch.context() as m:
            m.setattr(os, "scandir", emfile)
            assert repo.refresh() == [1]
        real_stat = Path.stat

        def stat(self: Path, *args: object, **kwargs: object) -> os.stat_result:
            if self.name == "model.onnx":
                raise OSError(errno.EMFILE, "Too many open files")
            return real_stat(self, *args, **kwargs)

        with monkeypatch.context() as m:  # Path.is_file() would have said False here
            m.setattr(Path, "stat", stat)
            assert repo.refresh() == [1]
        shutil.rmtree(base / "1")  # empty: nothing changes
        assert repo.refresh() == [1] and repo.latest().version == 1
    finally:
        repo.close()


def test_new_version_waits_for_the_streaming_file_to_be_stable(export_info: ExportInfo,
                                                               tmp_path: Path) -> None:
    base = copy_export(export_info, tmp_path / "m")
    repo = _repo(base, wait_for_stable=True)
    try:
        repo.refresh()
        assert repo.refresh() == [1]
        shutil.copytree(base / "1", base / "2")
        assert repo.refresh() == [1]  # first sight: pending
        st = (base / "2" / "model_streaming.onnx").stat()
        os.utime(base / "2" / "model_streaming.onnx", ns=(st.st_atime_ns,
                                                          st.st_mtime_ns + 10**9))
        assert repo.refresh() == [1]  # the streaming file changed: still pending
        assert repo.refresh() == [2]
        assert set(repo.latest().signatures) == {"serving_default", "streaming_step"}
    finally:
        repo.close()


def test_retire_only_after_the_replacement_is_available(export_info: ExportInfo,
                                                        tmp_path: Path) -> None:
    base = copy_export(export_info, tmp_path / "m")
    repo = _repo(base, wait_for_stable=True, num_versions=1)
    try:
        repo.refresh()
        assert repo.refresh() == [1]
        (base / "2").mkdir()
        (base / "2" / "model.onnx").write_bytes(b"not a model")
        for _ in range(3):  # 2 fails to load: 1 keeps serving
            assert repo.refresh() == [1]
        assert 2 in repo.failures()
        shutil.rmtree(base / "2")
        shutil.copytree(base / "1", base / "3")
        assert repo.refresh() == [1]  # 3 pending: 1 still serves
        assert repo.refresh() == [3]
        shutil.rmtree(base / "3")  # newest removed: 3 answers until 1 is back
        assert repo.refresh() == [3]
        assert repo.refresh() == [1]
    finally:
        repo.close()
