"""Robustness evaluation, aggregation over seeds and the report writers."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from training import perturbations, reporting, robustness

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- aggregation


def test_aggregate_matches_numpy_on_synthetic_numbers():
    values = [0.971, 0.975, 0.968, 0.980, 0.977]
    mean, std = robustness.aggregate(values)
    assert mean == pytest.approx(sum(values) / 5, abs=1e-12)
    manual = (sum((v - mean) ** 2 for v in values) / 4) ** 0.5  # sample std, ddof=1
    assert std == pytest.approx(manual, abs=1e-12)


def test_aggregate_single_value_has_zero_std():
    assert robustness.aggregate([0.5]) == (0.5, 0.0)


def test_aggregate_rejects_empty():
    with pytest.raises(ValueError, match="at least one"):
        robustness.aggregate([])


def test_aggregate_results_nested_tree():
    per_seed = {
        0: {"clean": 0.9, "white_noise": {"0.4": 0.8, "1.2": 0.5}},
        1: {"clean": 1.0, "white_noise": {"0.4": 0.6, "1.2": 0.7}},
        2: {"clean": 0.95, "white_noise": {"0.4": 0.7, "1.2": 0.6}},
    }
    agg = robustness.aggregate_results(per_seed)
    assert agg["n"] == 3
    assert agg["mean"]["clean"] == pytest.approx(0.95)
    assert agg["std"]["clean"] == pytest.approx(0.05)
    assert agg["mean"]["white_noise"]["0.4"] == pytest.approx(0.7)
    assert agg["std"]["white_noise"]["0.4"] == pytest.approx(0.1)
    assert agg["mean"]["white_noise"]["1.2"] == pytest.approx(0.6)
    assert agg["std"]["white_noise"]["1.2"] == pytest.approx(0.1)


def test_aggregate_results_rejects_mismatched_seeds():
    with pytest.raises(ValueError, match="missing"):
        robustness.aggregate_results({0: {"clean": 1.0, "fgsm": {"0.1": 0.5}}, 1: {"clean": 1.0}})


# ----------------------------------------------------------------------------- perturbed inputs


def test_perturbed_inputs_are_shared_and_reproducible():
    x = np.random.default_rng(0).normal(size=(6, 12, 1)).astype("float32")
    a = robustness.PerturbedInputs(x, base_seed=7)
    b = robustness.PerturbedInputs(x.copy(), base_seed=7)
    for kind in ("white_noise", "multiplicative_noise", "salt_and_pepper"):
        np.testing.assert_array_equal(a.get(kind, 1, 0.8), b.get(kind, 1, 0.8))
    # The documented seed and the perturbations module give the very same array.
    seed = robustness.perturbation_seed(7, "white_noise", 1)
    np.testing.assert_array_equal(
        a.get("white_noise", 1, 0.8), perturbations.additive_white_noise(x, 0.8, seed)
    )
    # Different strengths / kinds draw different noise; the clean input is untouched.
    assert not np.allclose(a.get("white_noise", 0, 0.4) - x, (a.get("white_noise", 1, 0.8) - x) / 2)
    np.testing.assert_array_equal(x, b.x)


def test_salt_and_pepper_uses_whole_test_set_range():
    x = np.linspace(-3, 5, 600, dtype="float32").reshape(6, 100, 1)
    cache = robustness.PerturbedInputs(x, base_seed=0)
    out = cache.get("salt_and_pepper", 2, 0.1)
    changed = out[out != x]
    assert changed.size > 0
    assert set(np.unique(changed).tolist()) <= {-3.0, 5.0}


# ----------------------------------------------------------------------------- evaluation


def _sign_model() -> keras.Model:
    """Logits (-s, s) with s = sum over time of x: predicts class 1 iff the sum is positive."""
    inputs = keras.Input((10, 1))
    s = keras.layers.Flatten()(inputs)
    logits = keras.layers.Dense(2, use_bias=False)(s)
    model = keras.Model(inputs, logits)
    model.set_weights([np.concatenate([-np.ones((10, 1)), np.ones((10, 1))], axis=1)])
    return model


def test_evaluate_robustness_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 10, 1)).astype("float32")
    y = (x.sum(axis=(1, 2)) > 0).astype("int32")
    y[:5] = 1 - y[:5]  # 45 of 50 right on clean inputs
    grid = {"white_noise": (0.4, 1.2), "multiplicative_noise": (0.8,), "fgsm": (0.05,)}
    cache = robustness.PerturbedInputs(x, base_seed=3)
    res = robustness.evaluate_robustness(_sign_model(), x, y, grid, cache, batch_size=16)
    assert res["clean"] == pytest.approx(0.9)
    for kind, strengths in grid.items():
        assert set(res[kind]) == {f"{s:g}" for s in strengths}
        if kind == "fgsm":
            continue
        for i, s in enumerate(strengths):
            xp = cache.get(kind, i, s)
            expected = np.mean((xp.sum(axis=(1, 2)) > 0).astype("int32") == y)
            assert res[kind][f"{s:g}"] == pytest.approx(expected)
    # FGSM on this linear model moves every value against the true class by r:
    # the sum shifts by -10 r for y = 1 and +10 r for y = 0.
    shift = np.where(y == 1, -0.5, 0.5)
    expected = np.mean(((x.sum(axis=(1, 2)) + shift) > 0).astype("int32") == y)
    assert res["fgsm"]["0.05"] == pytest.approx(expected)
    assert res["fgsm"]["0.05"] <= res["clean"]


def test_evaluate_robustness_rejects_unknown_kind():
    x = np.zeros((4, 10, 1), "float32")
    with pytest.raises(ValueError, match="unknown kind 'blur'"):
        robustness.evaluate_robustness(_sign_model(), x, np.zeros(4, "int32"), {"blur": (1,)})


def test_evaluate_robustness_rejects_cache_of_other_inputs():
    x = np.zeros((4, 10, 1), "float32")
    cache = robustness.PerturbedInputs(np.zeros((5, 10, 1), "float32"))
    with pytest.raises(ValueError, match="shape"):
        robustness.evaluate_robustness(_sign_model(), x, np.zeros(4, "int32"), {}, cache)


# ----------------------------------------------------------------------------- reports


def _agg(clean: float, s12: float, std: float = 0.01) -> dict:
    return {
        "n": 5,
        "mean": {"clean": clean, "white_noise": {"0.4": clean, "0.8": clean, "1.2": s12}},
        "std": {"clean": std, "white_noise": {"0.4": std, "0.8": std, "1.2": std}},
    }


def test_markdown_table_has_paper_rows_beside_ours():
    grid = {"white_noise": (0.4, 0.8, 1.2), "multiplicative_noise": (0.4, 0.8, 1.2)}
    table = reporting.markdown_table({"NRNN": _agg(0.977, 0.926)}, grid, reporting.PAPER_ECG_TABLE3)
    lines = table.splitlines()
    assert lines[0] == (
        "| model | seeds | clean | s=0.4 | s=0.8 | s=1.2 | sM=0.4 | sM=0.8 | sM=1.2 |"
    )
    assert lines[2].startswith("| NRNN (ours) | 5 | 97.70 ± 1.00 |")
    assert "| 92.60 ± 1.00 | – | – | – |" in lines[2]  # missing kinds print as a dash
    assert lines[3] == (
        "| Lipschitz RNN (paper) | 10 | 97.7 | 97.4 | 95.1 | 88.9 | 97.6 | 97.0 | 95.6 |"
    )
    assert lines[4].startswith("| NRNN 0.03/0.06 (paper) | 10 | 97.7 | 97.5 | 96.3 | 92.6 |")


def test_write_results_and_plot(tmp_path):
    grid = {"white_noise": (0.4, 0.8, 1.2), "fgsm": (0.01,)}
    models = {"NRNN": _agg(0.97, 0.9), "Lipschitz RNN": _agg(0.96, 0.85, std=0.0)}
    models["NRNN"]["mean"]["fgsm"] = {"0.01": 0.8}
    models["NRNN"]["std"]["fgsm"] = {"0.01": 0.02}
    path = reporting.write_results_json(tmp_path / "results.json", {"models": models})
    assert json.loads(path.read_text())["models"]["NRNN"]["mean"]["clean"] == 0.97
    md = reporting.write_results_md(
        tmp_path / "results.md",
        models,
        grid,
        title="T",
        command="cmd",
        notes=["n1"],
        paper=reporting.PAPER_ECG_TABLE3,
    ).read_text()
    assert md.startswith("# T\n") and "cmd" in md and "- n1" in md and "r=0.01" in md
    png = reporting.plot_robustness(tmp_path / "robustness.png", models, grid, title="T")
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000
    assert not list(tmp_path.glob("*.tmp"))
