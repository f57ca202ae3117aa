"""The hand-built unrolled ONNX graph of a folded Lipschitz cell (`export.onnx_folded`).

Numerics against an independent numpy forward pass, in onnxruntime and in the ONNX reference
runtime; the node structure (three nodes per step, no loop, no random op); the fallback to
tf2onnx for every cell that is not folded.
"""

from __future__ import annotations

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from export_helpers import ALL_CELLS, FEATURES, TIME, inputs, make_cell, make_model

from export.inference_model import build_inference_model
from export.onnx_export import find_random_onnx_ops, onnx_op_types
from export.onnx_folded import convert_fixed_sequence, folded_sequence_onnx
from export.verify import reference_session
from keras_nrnn import LipschitzCell


def _numpy_logits(im, x: np.ndarray) -> np.ndarray:
    """h <- h + dt (A h + a(W h + U x + b)) in float64 after the per-step layers; the head."""
    m = im.cell.drift_matrices_numpy()
    pre = x
    for layer in im.pre_layers:
        pre = np.asarray(layer(pre), np.float64)
    act = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0.0)}[im.cell.activation.__name__]
    h = np.zeros((x.shape[0], im.cell.units))
    for t in range(x.shape[1]):
        h = h + m["dt"] * (h @ m["A"].T + act(h @ m["W"].T + pre[:, t] @ m["U"] + m["b"]))
    out = np.asarray(im.model.layers[-1](h.astype(np.float32)), np.float64)
    if im.softmax_mode is not None:  # the model's output is the probabilities
        return np.log(out)
    return out


def _ort(path):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(None, feeds), strict=True))


@pytest.mark.parametrize("case", ["lipschitz", "noisy+pre+softmax", "per_unit_dt", "relu"])
def test_folded_graph_matches_numpy_in_two_runtimes(case, tmp_path):
    if case == "lipschitz":
        model = make_model(make_cell("LipschitzCell"))
    elif case == "noisy+pre+softmax":
        model = make_model(make_cell("NoisyLipschitzCell"), pre_dense=True, softmax=True)
    elif case == "per_unit_dt":
        cell = LipschitzCell(8, dt=0.2, beta=0.8, learnable_dt="per_unit")
        model = make_model(cell)
        cell.dt_variable.assign(np.linspace(0.05, 0.4, 8).astype("float32"))
    else:
        model = make_model(LipschitzCell(8, dt=0.2, activation="relu"))
    im = build_inference_model(model)
    path = tmp_path / "model_fixed.onnx"
    written = convert_fixed_sequence(im, path)
    assert onnx.load(str(path)) == written
    # Three nodes per step after the first (Gemm, activation, Gemm), no per-step Squeeze,
    # no loop, no random op.
    ops = [n.op_type for n in written.graph.node if n.name.startswith("rnn/")]
    act = "Relu" if case == "relu" else "Tanh"
    assert ops.count("Gemm") == 2 * (TIME - 1) and ops.count(act) == TIME
    assert len(ops) == 3 * (TIME - 1) + 3  # + Split, the first step's activation, Mul by dt
    assert not {"Loop", "If", "Scan", "Squeeze"} & onnx_op_types(written)
    assert find_random_onnx_ops(written) == []
    dims = written.graph.input[0].type.tensor_type.shape.dim
    assert (dims[0].dim_param, dims[1].dim_value, dims[2].dim_value) == ("batch", TIME, FEATURES)
    for batch in (1, 7):
        x = inputs(batch=batch)
        want = _numpy_logits(im, x.astype(np.float64))
        keras_out = im.keras_reference(x)
        for runtime in (_ort(path), reference_session(path)):
            got = runtime({"inputs": x})
            np.testing.assert_allclose(got["logits"], want, atol=1e-5)
            np.testing.assert_array_equal(got["classes"], want.argmax(-1))
            key = "probabilities" if im.softmax_mode else "logits"
            np.testing.assert_allclose(got[key], keras_out[key], atol=1e-5)
    # Time is fixed to T: another length is refused.
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        _ort(path)({"inputs": inputs(time=TIME // 2)})


@pytest.mark.parametrize("kind", [k for k in ALL_CELLS if "Lipschitz" not in k])
def test_cells_that_are_not_folded_fall_back_to_tf2onnx(kind, tmp_path):
    model = make_model(make_cell(kind), pre_dense=True)
    im = build_inference_model(model)
    assert folded_sequence_onnx(im) is None
    path = tmp_path / "model_fixed.onnx"
    written = convert_fixed_sequence(im, path)
    assert not any(n.name.startswith("rnn/") for n in written.graph.node)
    x = inputs()
    np.testing.assert_allclose(
        _ort(path)({"inputs": x})["logits"], np.asarray(model(x, training=False)), atol=1e-5
    )


def test_unfoldable_lipschitz_steps_and_general_path_are_not_hand_built(tmp_path):
    """Per-unit steps spanning more than 100x are not folded; neither is a general-path model
    (stacked layers) nor a model without a fixed length."""
    cell = LipschitzCell(8, dt=0.2, learnable_dt="per_unit")
    model = make_model(cell)
    cell.dt_variable.assign(np.geomspace(1e-3, 0.5, 8).astype("float32"))
    assert folded_sequence_onnx(build_inference_model(model)) is None
    x = inputs()
    convert_fixed_sequence(build_inference_model(model), tmp_path / "a.onnx")
    np.testing.assert_allclose(
        _ort(tmp_path / "a.onnx")({"inputs": x})["logits"],
        np.asarray(model(x, training=False)),
        atol=1e-5,
    )
    keras.utils.set_random_seed(0)
    stacked = keras.Sequential(
        [
            keras.Input((TIME, FEATURES)),
            keras.layers.RNN(LipschitzCell(8), return_sequences=True),
            keras.layers.RNN(LipschitzCell(8)),
            keras.layers.Dense(3),
        ]
    )
    assert build_inference_model(stacked).path == "general"
    assert folded_sequence_onnx(build_inference_model(stacked)) is None
    any_length = build_inference_model(make_model(LipschitzCell(8), time=None))
    assert folded_sequence_onnx(any_length) is None
