"""Tests of the benchmark package: the torch baseline's numerics, the harness logic, the CLI.

No test asserts a timing: the machine is shared, so only structure and numerics are checked.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import contenders as contenders_mod
from benchmarks import harness, runner
from benchmarks.config import ECGConfig
from benchmarks.contenders import ContenderUnavailableError, Options

REPO = Path(__file__).resolve().parents[2]
SMALL = ECGConfig(units=8, timesteps=12)


def _torch():
    return pytest.importorskip(
        "torch", reason="torch is an optional benchmark extra (pip install -e .[bench])"
    )


# --------------------------------------------------------------------------- torch baseline


def _numpy_parametrize(M: np.ndarray, beta: float, gamma: float) -> np.ndarray:
    n = M.shape[0]
    return (1 - beta) * (M + M.T) + beta * (M - M.T) - gamma * np.eye(n)


def _numpy_params(model) -> dict[str, np.ndarray]:
    return {
        "M_A": model.M_A.detach().double().numpy(),
        "M_W": model.M_W.detach().double().numpy(),
        "U": model.U.weight.detach().double().numpy(),
        "b": model.U.bias.detach().double().numpy(),
    }


def _numpy_step(p, cfg: ECGConfig, h, x_t, xi=None) -> np.ndarray:
    """Eq. 5 in float64: h + dt f + (sigma_1 + sigma_2 f) sqrt(dt) xi."""
    A = _numpy_parametrize(p["M_A"], cfg.beta, cfg.gamma_a)
    W = _numpy_parametrize(p["M_W"], cfg.beta, cfg.gamma_w)
    f = h @ A.T + np.tanh(h @ W.T + x_t @ p["U"].T + p["b"])
    out = h + cfg.dt * f
    if xi is not None:
        out = out + (cfg.additive_noise + cfg.multiplicative_noise * f) * math.sqrt(cfg.dt) * xi
    return out


def test_torch_parametrization_matches_numpy():
    _torch()
    from benchmarks.torch_baseline import build_model

    model = build_model(SMALL, seed=3)
    A, W = (m.detach().double().numpy() for m in model.matrices())
    p = _numpy_params(model)
    np.testing.assert_allclose(A, _numpy_parametrize(p["M_A"], 0.9, 0.001), atol=1e-6)
    np.testing.assert_allclose(W, _numpy_parametrize(p["M_W"], 0.9, 0.001), atol=1e-6)
    # the initial M_A has std init_std / units
    big = build_model(ECGConfig(), seed=0)
    assert big.M_A.detach().std().item() == pytest.approx(0.1 / 128, rel=0.05)


@pytest.mark.parametrize("with_noise", [True, False])
def test_torch_one_step_matches_numpy_eq5(with_noise):
    torch = _torch()
    from benchmarks.torch_baseline import build_model

    model = build_model(SMALL, seed=1)
    rng = np.random.default_rng(0)
    h = rng.standard_normal((4, SMALL.units))
    x_t = rng.standard_normal((4, 1))
    xi = rng.standard_normal((4, SMALL.units)) if with_noise else None
    A, W = model.matrices()
    got = model.step(
        torch.tensor(h, dtype=torch.float32),
        torch.tensor(x_t, dtype=torch.float32),
        A,
        W,
        None if xi is None else torch.tensor(xi, dtype=torch.float32),
    )
    want = _numpy_step(_numpy_params(model), SMALL, h, x_t, xi)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-5, atol=1e-5)


def test_torch_training_forward_uses_fresh_standard_normal_draws_per_step():
    torch = _torch()
    from benchmarks.torch_baseline import build_model

    model = build_model(SMALL, seed=2)
    x = torch.randn(3, 5, 1)
    torch.manual_seed(7)
    got = model(x)
    # Replay the same random stream through the numpy eq. 5, one draw per step.
    torch.manual_seed(7)
    p = _numpy_params(model)
    h = np.zeros((3, SMALL.units))
    for t in range(5):
        xi = torch.randn(3, SMALL.units).double().numpy()
        h = _numpy_step(p, SMALL, h, x[:, t].double().numpy(), xi)
    V = model.classifier.weight.detach().double().numpy()
    c = model.classifier.bias.detach().double().numpy()
    np.testing.assert_allclose(got.detach().numpy(), h @ V.T + c, rtol=1e-4, atol=1e-5)


def test_torch_eval_mode_is_deterministic_and_noise_free():
    torch = _torch()
    from benchmarks.torch_baseline import build_model

    model = build_model(SMALL, seed=0)
    x = torch.randn(2, SMALL.timesteps, 1)
    noisy_a, noisy_b = model(x), model(x)
    assert not torch.allclose(noisy_a, noisy_b), "training mode must draw noise"
    model.eval()
    with torch.inference_mode():
        a, b = model(x), model(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # eval equals the deterministic (noisy=False) model in training mode
    det = build_model(SMALL, noisy=False, seed=0)
    torch.testing.assert_close(det(x).detach(), a)


def test_torch_train_step_runs_and_lowers_loss_on_a_fixed_batch():
    _torch()
    from benchmarks.torch_baseline import make_train_step

    step = make_train_step(8, 6, noisy=False, config=SMALL, seed=0)
    losses = [step() for _ in range(30)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_torch_missing_gives_install_hint(monkeypatch):
    from benchmarks import torch_baseline

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    assert not torch_baseline.torch_available()
    with pytest.raises(ModuleNotFoundError, match=r"torch==2\.13\.0.*\.\[bench\]"):
        torch_baseline.import_torch()
    with pytest.raises(ContenderUnavailableError, match=r"pip install -e \.\[bench\]"):
        contenders_mod.create("torch-loop", Options())


def test_torch_memory_subprocess_reports_figures():
    _torch()
    from benchmarks.memory import measure_in_subprocess

    out = measure_in_subprocess("torch-loop", 20, 2, timeout_s=120)
    assert "error" not in out, out
    assert out["step_peak_mb"] >= out["step_transient_mb"] >= 0
    assert out["process_peak_mb"] >= out["rss_before_step_mb"] > 0
    assert out["process_peak_mb"] >= out["rss_setup_mb"] + out["step_peak_mb"] - 0.01
    # the framework's start-up is paid before the measured model is built
    assert out["runtime_warm_up_mb"] >= 0


def test_memory_slope_is_the_step_peak_difference_per_1000_steps():
    memory = {"140": {"a": {"step_peak_mb": 12.0}, "b": {"error": "boom"}},
              "1140": {"a": {"step_peak_mb": 20.5}, "b": {"step_peak_mb": 9.0}}}
    assert runner.memory_slope(memory, "a", "140", "1140") == pytest.approx(8.5)
    assert runner.memory_slope(memory, "b", "140", "1140") is None
    assert runner.memory_slope(memory, "a", "1140", "140") is None


def test_worker_process_runs_a_contender_and_reports_its_own_timings():
    _torch()
    from benchmarks.worker import RemoteContender

    remote = RemoteContender("torch-loop", Options())
    try:
        remote.wait_ready()
        infer = remote.make_inference(1, 10)
        assert remote.make_train_step(2, 10, noisy=False) is not None
        seconds = [infer() for _ in range(3)]
        assert all(isinstance(t, float) and t > 0 for t in seconds)
        burst = remote.make_inference_burst(1, 10, calls=4)
        assert isinstance(burst(), float) and burst() > 0
        remote.release()
    finally:
        remote.close()
    assert remote._proc.returncode == 0


def test_a_burst_sample_is_the_median_of_consecutive_calls():
    calls = []

    class Fake(contenders_mod.Contender):
        def make_inference(self, batch, timesteps):
            def infer():
                time.sleep((0.0, 0.004, 0.004, 0.02, 0.02)[len(calls)])
                calls.append(batch)

            return infer

    burst = Fake("fake", contenders_mod.OURS, Options()).make_inference_burst(1, 5, calls=5)
    median = burst()
    assert calls == [1] * 5
    assert 0.004 <= median < 0.02  # the middle of 0, 4, 4, 20, 20 ms
    assert contenders_mod.Contender("x", contenders_mod.OURS, Options()).make_inference_burst(
        1, 5, calls=3) is None


def test_worker_reports_unavailable_contenders():
    from benchmarks.worker import RemoteContender

    remote = RemoteContender("onnx", Options())
    with pytest.raises(ContenderUnavailableError, match="no --onnx FILE given"):
        remote.wait_ready()
    assert remote._proc.returncode is not None  # the worker was stopped


# --------------------------------------------------------------------------- harness


def test_median_iqr_and_ratio():
    assert harness.median([5.0, 1.0, 3.0]) == 3.0
    assert harness.median([1.0, 2.0, 3.0, 4.0]) == 2.5
    with pytest.raises(ValueError, match="values"):
        harness.median([])
    assert harness.relative_iqr([2.0]) == 0.0
    assert harness.relative_iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx((4 - 2) / 3)
    assert harness.ratio(6.0, 3.0) == 2.0
    assert harness.ratio(1.0, 0.0) is None
    assert harness.ratio(None, 1.0) is None


def test_verdict_respects_direction_and_tolerance():
    H, L = harness.HIGHER_IS_BETTER, harness.LOWER_IS_BETTER
    assert harness.verdict(1.5, H) == "better"
    assert harness.verdict(1.5, L) == "worse"
    assert harness.verdict(0.5, L) == "better"
    assert harness.verdict(1.03, H) == "on par"
    assert harness.verdict(None, H) == "n/a"
    with pytest.raises(ValueError, match="direction"):
        harness.verdict(1.0, "sideways")


def test_time_alternating_rotates_order_and_uses_the_clock():
    calls: list[str] = []
    ticks = itertools.count()
    cost = {"a": 1, "b": 3}
    now = [0.0]

    def make(name):
        def fn():
            calls.append(name)
            now[0] += cost[name]

        return fn

    def clock():
        next(ticks)
        return now[0]

    out = harness.time_alternating(
        {"a": make("a"), "b": make("b")}, warmup=1, repeats=4, items_per_call=10, clock=clock
    )
    assert calls[:2] == ["a", "b"]  # warm-up, then rounds in rotated order
    assert calls[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert out["a"].samples_s == [1.0] * 4
    assert out["b"].samples_s == [3.0] * 4
    assert out["b"].median_ms == 3000.0
    assert out["a"].items_per_s == pytest.approx(10.0)


def test_time_alternating_self_timed_uses_returned_seconds():
    out = harness.time_alternating(
        {"w": lambda: 0.25}, warmup=2, repeats=3, self_timed=True,
        clock=lambda: pytest.fail("clock must not be used"),
    )
    assert out["w"].samples_s == [0.25] * 3


def test_time_alternating_min_time_adds_rounds_up_to_a_cap():
    now = [0.0]

    def fn():
        now[0] += 0.1

    out = harness.time_alternating(
        {"x": fn}, warmup=0, repeats=2, min_time_s=0.55, clock=lambda: now[0]
    )
    assert len(out["x"].samples_s) == 6  # 6 x 0.1 s >= 0.55 s
    capped = harness.time_alternating(
        {"x": fn}, warmup=0, repeats=2, min_time_s=100.0, clock=lambda: now[0]
    )
    assert len(capped["x"].samples_s) == 8  # at most 4 x repeats rounds
    budget = harness.time_alternating(
        {"x": fn}, warmup=0, repeats=2, min_time_s=100.0, clock=lambda: now[0], max_extra_s=0.3
    )
    assert len(budget["x"].samples_s) == 3  # extra rounds stop once 0.3 s were spent


def test_formatting():
    assert harness.format_number(13012.4) == "13,012"
    assert harness.format_number(3.84) == "3.84"
    assert harness.format_number(0.5) == "0.500"
    assert harness.format_number(None) == "-"
    text = harness.format_table(["x", "value"], [["a", "1"], ["long", "22"]], markdown=False)
    lines = text.splitlines()
    assert lines[0].startswith("x     value")
    assert lines[3] == "long  22"
    with pytest.raises(ValueError, match="rows"):
        harness.format_table(["x"], [["a", "b"]], markdown=True)


def test_make_figure_and_rows_from_synthetic_timings():
    fast = harness.Timing("ours", [0.050, 0.040, 0.060], items_per_call=128)
    slow = harness.Timing("base", [0.100, 0.080, 0.120], items_per_call=128)
    sides = {"base": "baseline", "ours": "ours"}
    fig = runner.make_figure(
        "train", "sequences/s", harness.HIGHER_IS_BETTER,
        {"base": slow.items_per_s, "ours": fast.items_per_s}, sides,
    )
    assert fig["baseline"] == {"name": "base", "value": pytest.approx(1280.0)}
    assert fig["ratio"]["ours"] == pytest.approx(2.0)
    assert fig["verdict"]["ours"] == "better"
    lat = runner.make_figure(
        "lat", "ms", harness.LOWER_IS_BETTER,
        {"base": slow.median_ms, "ours": fast.median_ms}, sides,
    )
    assert lat["ratio"]["ours"] == pytest.approx(0.5)
    assert lat["verdict"]["ours"] == "better"
    rows = runner.figure_rows({"t": fig, "l": lat})
    assert rows[0] == [
        "train [sequences/s]", "ours", "2,560", "1,280 (base)", "2.00", "higher is better",
        "better",
    ]
    assert rows[1][4] == "0.500" and rows[1][5] == "lower is better"
    # a second baseline-side contender is a reference row, not "ours"
    ref = runner.make_figure(
        "lat", "ms", harness.LOWER_IS_BETTER, {"base": 4.0, "base-1t": 2.0, "ours": 1.0},
        {"base": "baseline", "base-1t": "baseline", "ours": "ours"},
    )
    assert ref["baseline"]["name"] == "base" and list(ref["ours"]) == ["ours"]
    assert ref["reference_ratio"] == {"base-1t": 0.5}
    assert runner.figure_rows({"l": ref})[1][1:5] == ["base-1t (ref)", "2.00", "4.00 (base)",
                                                      "0.500"]
    # without a baseline the ratio is missing, not invented
    alone = runner.make_figure("t", "x", harness.LOWER_IS_BETTER, {"ours": 2.0}, sides)
    assert alone["baseline"] is None and alone["ratio"] == {"ours": None}
    assert runner.figure_rows({"t": alone})[0][4] == "-"


def test_render_and_write_round_trip(tmp_path):
    fig = runner.make_figure("lat", "ms", harness.LOWER_IS_BETTER, {"b": 2.0, "o": 1.0},
                             {"b": "baseline", "o": "ours"})
    results = {
        "meta": {
            "started_utc": "2026-01-01T00:00:00+00:00", "cpu": "cpu", "cpu_count": 2,
            "threads": {"intra_op": 2, "inter_op": 1, "tensorflow_inter_op": 2},
            "loadavg_start": [0.1, 0, 0],
            "loadavg_end": [0.2, 0, 0], "versions": {"python": "3.11"}, "quick": True,
            "memory_measure": "RSS",
        },
        "figures": {"lat": fig},
        "memory": {"140": {"o": {"step_peak_mb": 1.5, "step_transient_mb": 0.5,
                                 "first_step_peak_mb": 2.0, "rss_setup_mb": 100.0,
                                 "runtime_warm_up_mb": 40.0, "process_peak_mb": 120.0}}},
        "skipped": {"onnx": "no --onnx FILE given"},
    }
    json_path, md_path = runner.write(results, tmp_path)
    assert json.loads(json_path.read_text())["figures"]["lat"]["ratio"]["o"] == 0.5
    md = md_path.read_text()
    assert "| lat [ms] | o | 1.00 | 2.00 (b) | 0.500 | lower is better | better |" in md
    assert "skipped onnx: no --onnx FILE given" in md
    assert "| 140 | o | 1.50 | 0.500 | 2.00 | 100 | 40.0 | 120 |" in md
    assert "threads 2/1 intra/inter-op (TensorFlow inter-op 2)" in md


# --------------------------------------------------------------------------- registry


def test_registry_selection_and_exported_skips():
    names = [s.name for s in contenders_mod.select("keras")]
    assert "torch-loop" not in names and "keras-rnn-cell" in names and "onnx" in names
    assert [s.name for s in contenders_mod.select("torch")] == ["torch-loop", "torch-loop-1thread"]
    assert contenders_mod.select(None)[0].name == "torch-loop"  # baseline first
    with pytest.raises(ValueError, match="only"):
        contenders_mod.select("jax")
    with pytest.raises(ValueError, match="registered contender"):
        contenders_mod.get_spec("nope")
    with pytest.raises(ContenderUnavailableError, match="no --onnx FILE given"):
        contenders_mod.create("onnx", Options())
    with pytest.raises(ContenderUnavailableError, match="no --savedmodel DIR given"):
        contenders_mod.create("savedmodel", Options())
    with pytest.raises(ContenderUnavailableError, match="does not exist"):
        contenders_mod.create("onnx", Options(onnx="/nonexistent/model.onnx"))


def test_bf16_contender_trains_in_bfloat16_and_restores_the_policy():
    """`keras-sdernn-bf16` builds the same SDERNN model under mixed_bfloat16 (bf16 compute,
    float32 weights and logits), leaves the global policy as it was, trains, and measures no
    inference (what is exported and served is float32)."""
    import keras

    from benchmarks.keras_side import build_model

    before = keras.config.dtype_policy().name
    model = build_model(SMALL, 5, True, 0, "sdernn", precision="mixed_bfloat16")
    assert keras.config.dtype_policy().name == before
    rnn, logits = model.layers
    assert rnn.cell.compute_dtype == "bfloat16" and rnn.cell.variable_dtype == "float32"
    assert logits.compute_dtype == "float32"
    assert model(np.zeros((2, 5, 1), "float32")).dtype == "float32"
    contender = contenders_mod.create("keras-sdernn-bf16", Options(config=SMALL))
    assert contender.make_inference(2, 5) is None
    loss = contender.make_train_step(4, 5, noisy=True)()
    assert np.isfinite(float(np.asarray(loss).ravel()[0]))
    contender.release()


def test_precision_figures_compare_bf16_with_float32_on_the_same_path():
    t = {
        "keras-sdernn": harness.Timing("a", [0.040], 128),
        "keras-sdernn/deterministic": harness.Timing("a", [0.030], 128),
        "keras-sdernn-bf16": harness.Timing("b", [0.050], 128),
        "keras-sdernn-bf16/deterministic": harness.Timing("b", [0.020], 128),
        "torch-loop": harness.Timing("t", [0.080], 128),
    }
    figures = runner.precision_figures(t, 784, suffix="_T784")
    assert set(figures) == {"bf16_speedup_T784", "bf16_speedup_deterministic_T784"}
    noisy = figures["bf16_speedup_T784"]
    assert noisy["baseline"] == {"name": "keras-sdernn", "value": pytest.approx(3200.0)}
    assert noisy["ratio"] == {"keras-sdernn-bf16": pytest.approx(0.8)}
    assert noisy["verdict"]["keras-sdernn-bf16"] == "worse"
    assert figures["bf16_speedup_deterministic_T784"]["ratio"]["keras-sdernn-bf16"] == (
        pytest.approx(1.5)
    )
    assert "T 784" in noisy["title"] and "float32" in noisy["note"]
    del t["keras-sdernn-bf16/deterministic"]
    assert set(runner.precision_figures(t, 140)) == {"bf16_speedup"}
    assert runner.precision_figures({"torch-loop": t["torch-loop"]}, 140) == {}


def test_cpu_bf16_reads_the_flags():
    assert runner.cpu_bf16("fpu sse avx512f avx512_bf16 amx_tile amx_bf16 amx_int8") == "AMX"
    assert runner.cpu_bf16("fpu avx512f avx512_bf16") == "AVX-512 bf16"
    assert runner.cpu_bf16("fpu avx2") == "none"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert runner.cpu_bf16() == ("unknown" if not flags else runner.cpu_bf16(
        next(line for line in flags.splitlines() if line.startswith("flags")).split(":", 1)[1]
    ))


def test_onnx_contenders_thread_settings(tmp_path):
    """`onnx` uses the harness's intra-op threads, `onnx-1thread` one (the server's setting);
    both run the file."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from benchmarks.threads import INTRA_OP_THREADS

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["inputs"], ["y"], keepdims=0)],
        "g",
        [helper.make_tensor_value_info("inputs", TensorProto.FLOAT, [None, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    threads = {}
    for name in ("onnx", "onnx-1thread"):
        contender = contenders_mod.create(name, Options(onnx=str(path)))
        threads[name] = contender._session.get_session_options().intra_op_num_threads
        assert np.isfinite(contender.make_inference(2, 5)()[0])
    assert threads == {"onnx": INTRA_OP_THREADS, "onnx-1thread": 1}


def test_a_new_contender_plugs_in_without_harness_changes():
    class Fake(contenders_mod.Contender):
        def make_inference(self, batch, timesteps):
            return lambda: None

    spec = contenders_mod.ContenderSpec(
        "fake-test", contenders_mod.OURS, "keras", lambda name, opts: Fake(name, "ours", opts),
        "test double", default=False,
    )
    contenders_mod.register(spec)
    try:
        with pytest.raises(ValueError, match="already registered"):
            contenders_mod.register(spec)
        settings = runner.Settings(quick=True, only="keras", contenders=["fake-test"],
                                   memory=False, isolate=False)
        results = runner.run(settings)
        assert results["contenders"] == {"fake-test": "ours"}
        assert set(results["figures"]) == {
            "train_seq_per_s", "noise_overhead", "infer_latency_ms_b1", "infer_seq_per_s_b256",
            "infer_latency_ms_b1_back_to_back",
        }
        assert results["figures"]["infer_latency_ms_b1"]["ours"]["fake-test"] >= 0
        assert results["figures"]["train_seq_per_s"]["ours"] == {}
    finally:
        contenders_mod.unregister("fake-test")


# --------------------------------------------------------------------------- CLI end to end


@pytest.mark.slow
def _env_without_torch(tmp_path):
    """An environment in which `import torch` fails, in this process's children too.

    `--only keras` must work on a machine without PyTorch; the test suite itself has PyTorch
    installed (it tests the baseline), so its absence is made real for the child processes by a
    package of the same name first on the path that refuses to import.
    """
    blocker = tmp_path / "no_torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch' (blocked)\", name='torch')\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(blocker.parent), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


def test_cli_quick_keras_only_writes_expected_json(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "keras", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
        env=_env_without_torch(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ours/baseline" in proc.stdout
    results = json.loads((out / "latest.json").read_text())
    assert (out / "latest.md").exists()
    assert {"meta", "figures", "timings", "memory", "skipped", "contenders"} <= set(results)
    assert set(results["figures"]) == {
        "train_seq_per_s", "noise_overhead", "infer_latency_ms_b1", "infer_seq_per_s_b256",
        "infer_latency_ms_b1_back_to_back", "memory_step_peak_mb_T140", "bf16_speedup",
        "bf16_speedup_deterministic",
    }
    assert "torch-loop" not in results["contenders"]
    assert results["figures"]["bf16_speedup"]["ratio"]["keras-sdernn-bf16"] > 0
    assert "keras-sdernn-bf16" not in results["figures"]["infer_latency_ms_b1"]["ours"]
    assert results["meta"]["cpu_bf16"] in ("AMX", "AVX-512 bf16", "none", "unknown")
    assert f"bf16 matmuls: {results['meta']['cpu_bf16']}" in proc.stdout
    for key in ("keras-rnn-cell", "keras-rnn-cell-xla"):
        assert results["figures"]["train_seq_per_s"]["ours"][key] > 0
        assert results["figures"]["noise_overhead"]["ours"][key] > 0
        assert results["figures"]["infer_latency_ms_b1"]["ours"][key] > 0
    assert results["figures"]["infer_seq_per_s_b256"]["ours"]["keras-rnn-cell-predict"] > 0
    assert results["figures"]["train_seq_per_s"]["direction"] == "higher is better"
    assert results["figures"]["infer_latency_ms_b1"]["direction"] == "lower is better"
    assert results["memory"]["140"]["keras-rnn-cell"]["step_peak_mb"] >= 0
    assert results["skipped"]["onnx"] == "no --onnx FILE given"
    assert results["meta"]["threads"] == {"intra_op": 2, "inter_op": 1, "tensorflow_inter_op": 2}


def test_cli_list_needs_no_framework():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--list"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "torch-loop" in proc.stdout and "keras-rnn-cell-xla" in proc.stdout


@pytest.mark.slow
def test_long_training_figures_run_for_the_long_contenders_only():
    settings = runner.Settings(
        quick=True, only="keras", contenders=["keras-sdernn-xla", "keras-rnn-cell-predict"],
        memory=False, isolate=False, timesteps=6, long_timesteps=(9,),
    )
    results = runner.run(settings)
    figures = results["figures"]
    assert {"train_seq_per_s_T9", "noise_overhead_T9"} <= set(figures)
    assert "T 9" in figures["train_seq_per_s_T9"]["title"]
    assert set(figures["train_seq_per_s_T9"]["ours"]) == {"keras-sdernn-xla"}
    assert figures["train_seq_per_s_T9"]["ours"]["keras-sdernn-xla"] > 0
    assert figures["noise_overhead_T9"]["ours"]["keras-sdernn-xla"] > 0
    assert results["meta"]["long_timesteps"] == [9]


def test_long_timesteps_flag(capsys):
    from benchmarks.__main__ import main, parse_args

    assert parse_args([]).long_timesteps == "784"
    for bad in ("0", "x,784"):
        assert main(["--only", "keras", "--long-timesteps", bad]) == 2
        err = capsys.readouterr().err
        assert "Argument `--long-timesteps` must be comma-separated integers >= 1" in err
        assert repr(bad) in err


def test_timesteps_flag_sets_the_timing_length_and_rejects_nonpositive(capsys):
    from benchmarks.__main__ import main, parse_args

    assert parse_args(["--timesteps", "784"]).timesteps == 784
    assert parse_args([]).timesteps == 140
    assert main(["--only", "keras", "--timesteps", "0"]) == 2
    assert "Argument `--timesteps` must be an integer >= 1; received 0" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_exports_times_both_formats_of_each_folder(tmp_path):
    """Two exports of one tiny model: every folder's SavedModel and model_fixed.onnx are
    timed at batch 1 and the larger batch (they agree, else the command stops)."""
    pytest.importorskip("onnxruntime")
    import keras

    from benchmarks import compare_exports
    from export import export_model
    from keras_nrnn import LipschitzCell

    model = keras.Sequential(
        [keras.Input((6, 1)), keras.layers.RNN(LipschitzCell(4)), keras.layers.Dense(2)]
    )
    folders = [export_model(model, tmp_path / "e", version=v) for v in (1, 2)]
    out = compare_exports.main(
        [*map(str, folders), "--rounds", "1", "--calls", "1", "--batch", "3",
         "--batch-rounds", "1", "--batch-calls", "1"]
    )
    names = {f"{f} {kind}" for f in folders for kind in ("savedmodel", "model_fixed.onnx")}
    assert set(out) == names
    assert all(set(v) == {1, 3} and min(v.values()) > 0 for v in out.values())
