"""`--strategy mirrored|multi_worker` of the runners (`training.distribute`).

Two logical CPU replicas need a TensorFlow whose devices are not initialised yet, so every
check runs in a fresh subprocess (`distribute_script.py` or the real command line).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ecg_helpers
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("distribute_script.py")
pytestmark = pytest.mark.timeout(600)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for key in ("TF_CONFIG", "KERAS_NRNN_CPU_REPLICAS", "KERAS_NRNN_INTERRUPT_AFTER_EPOCH"):
        env.pop(key, None)
    env.update(extra)
    return env


def _script(what: str, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), what, str(out)],
        capture_output=True, text=True, timeout=500, env=_env(), cwd=str(ROOT),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / f"{what}.json").read_text())


def _ecg(args: list[str], timeout: float = 500, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training.ecg", *args],
        capture_output=True, text=True, timeout=timeout, env=_env(**env), cwd=str(ROOT),
    )  # fmt: skip


def _one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize(
    ("extra", "env", "needles"),
    [
        (["--strategy", "ring"], {}, ["--strategy", "ring"]),
        (["--strategy", "mirrored", "--cpu-replicas", "0"], {}, ["--cpu-replicas 0"]),
        (["--cpu-replicas", "2"], {}, ["--cpu-replicas 2", "--strategy default"]),
        (["--strategy", "mirrored"], {"KERAS_NRNN_CPU_REPLICAS": "two"}, ["two"]),
        (["--strategy", "multi_worker"], {}, ["TF_CONFIG", "unset"]),
        (["--strategy", "multi_worker"], {"TF_CONFIG": "{not json"}, ["TF_CONFIG", "{not json"]),
        (
            ["--strategy", "multi_worker", "--overwrite"],
            {"TF_CONFIG": json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                      "task": {"type": "worker", "index": 0}})},
            ["--overwrite"],
        ),
    ],
)  # fmt: skip
def test_bad_strategy_flags_are_one_line_errors(tmp_path, extra, env, needles):
    proc = _ecg(ecg_helpers.tiny_args(tmp_path / "run", *extra), timeout=120, **env)
    _one_line_error(proc, *needles)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def noise_results(tmp_path_factory):
    return _script("noise", tmp_path_factory.mktemp("noise"))


@pytest.mark.parametrize("layer", ["sdernn", "rnn"])
def test_two_replicas_draw_different_noise_reproducibly(noise_results, layer):
    assert noise_results["replicas"] == 2
    r = noise_results[layer]
    # [replica][call] -> (4, 8) outputs of the noisy RNN layer on the SAME input batch.
    folded, unfolded = np.array(r["folded"]), np.array(r["unfolded"])
    assert folded.shape == (2, 2, 4, 8)
    # Each replica draws its own noise (the training-mode outputs differ) ...
    assert np.abs(folded[0] - folded[1]).max() > 1e-2
    # ... the generator still advances between calls on each replica ...
    assert np.abs(folded[0, 0] - folded[0, 1]).max() > 1e-2
    # ... and the same seed gives the same per-replica noise again (reproducible).
    np.testing.assert_array_equal(folded, np.array(r["folded_again"]))
    # Without the fold, the mirrored generator hands every replica the same noise: the bug.
    np.testing.assert_array_equal(unfolded[0], unfolded[1])
    # Replica 0 draws exactly what a one-replica run draws with that seed.
    np.testing.assert_array_equal(folded[0], np.array(r["single"])[0])
    # In inference mode there is no noise: both replicas compute the same function.
    inference = np.array(r["inference"])
    np.testing.assert_array_equal(inference[0], inference[1])


@pytest.mark.slow
def test_mirrored_training_is_reproducible_and_matches_one_replica(tmp_path):
    w = _script("train", tmp_path)

    def max_diff(a: str, b: str) -> float:
        pairs = zip(w[a], w[b], strict=True)
        return max(float(np.abs(np.array(p) - np.array(q)).max()) for p, q in pairs)

    # Noisy cells, two replicas: the same seed gives bit-identical weights after 2 epochs.
    assert max_diff("nrnn_mirrored", "nrnn_mirrored_again") == 0.0
    # Deterministic cells (noise off): two replicas of half the global batch give the weights
    # of one replica with the whole batch (the per-replica losses are scaled by 1/2 and the
    # gradients summed), up to float32 summation order.
    assert max_diff("lipschitz_mirrored", "lipschitz_single") < 1e-5
    # ... and training moved the weights (the comparison is not between initial values).
    assert max_diff("lipschitz_single", "lipschitz_initial") > 1e-3


@pytest.mark.slow
def test_ecg_command_line_trains_on_two_mirrored_replicas(tmp_path):
    out = tmp_path / "run"
    args = ecg_helpers.tiny_args(out, "--strategy", "mirrored", "--cpu-replicas", "2",
                                 "--batch-size", "32", tensorboard=False)  # fmt: skip
    proc = _ecg(args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads((out / "seed-0" / "eval.json").read_text())
    assert (record["strategy"], record["replicas"], record["epochs"]) == ("mirrored", 2, 2)
    assert (out / "results.json").is_file()
    # The global batch must split evenly over the replicas.
    bad = _ecg(ecg_helpers.tiny_args(tmp_path / "odd", "--strategy", "mirrored",
                                     "--cpu-replicas", "2", "--batch-size", "33"))  # fmt: skip
    _one_line_error(bad, "--batch-size", "33", "2 replicas")


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_workers(out: Path, epochs: int, log_dir: Path) -> list[subprocess.Popen]:
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    args = [
        "--units", "8", "--epochs", str(epochs), "--limit-train", "128", "--limit-val", "32",
        "--limit-test", "32", "--batch-size", "32", "--quiet", "--no-tensorboard",
        "--out", str(out), "--strategy", "multi_worker",
    ]  # fmt: skip
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
        log = open(log_dir / f"worker{index}-{len(list(log_dir.iterdir()))}.log", "wb")  # noqa: SIM115
        command = [sys.executable, "-m", "training.ecg", *args]
        env = _env(TF_CONFIG=json.dumps(config))
        procs.append(
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        )
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    return [p.wait(timeout) for p in procs]


def _weights(out: Path) -> list[np.ndarray]:
    with np.load(out / "seed-0" / "checkpoint.npz") as z:
        return [z[k] for k in sorted(z.files) if k.startswith("model_")]


@pytest.mark.slow
def test_two_workers_train_and_resume_after_one_is_killed(tmp_path):
    import signal
    import time

    from training.runner import read_checkpoint_state

    logs = tmp_path / "logs"
    logs.mkdir()
    epochs = 10
    # An uninterrupted two-worker run: the reference.
    ref = tmp_path / "ref"
    assert _wait(_start_workers(ref, epochs, logs), 400) == [0, 0], _logs(logs)
    assert json.loads((ref / "seed-0" / "eval.json").read_text())["replicas"] == 2
    assert read_checkpoint_state(ref / "seed-0")["epochs_done"] == epochs

    # The same run; worker 1 is killed (SIGKILL) once the chief has checkpointed an epoch.
    out = tmp_path / "run"
    chief, worker = _start_workers(out, epochs, logs)
    deadline = time.monotonic() + 300
    while (read_checkpoint_state(out / "seed-0") or {}).get("epochs_done", 0) < 1:
        assert time.monotonic() < deadline and chief.poll() is None, _logs(logs)
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait(30)
    try:  # the chief cannot go on without its peer: it fails (or we stop it)
        chief.wait(120)
    except subprocess.TimeoutExpired:
        chief.kill()
        chief.wait(30)
    done = read_checkpoint_state(out / "seed-0")["epochs_done"]
    assert 1 <= done < epochs, done
    assert not (out / "results.json").exists()

    # The same command on both workers resumes from the chief's last checkpoint.
    assert _wait(_start_workers(out, epochs, logs), 400) == [0, 0], _logs(logs)
    state = read_checkpoint_state(out / "seed-0")
    assert state["epochs_done"] == epochs
    assert [row["epoch"] for row in state["history"]] == list(range(1, epochs + 1))
    assert f"resumed from epoch {done}" in _logs(logs)
    # Nothing lost, nothing repeated: the weights (and the noise generator's state) are those
    # of the uninterrupted run.
    for a, b in zip(_weights(ref), _weights(out), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert (out / "results.json").is_file()


def _logs(folder: Path) -> str:
    return "\n".join(
        f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(folder.iterdir())
    )
