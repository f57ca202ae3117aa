"""Structure of the traced TensorFlow graph of an RNN over the cells.

- A and W are formed once per sequence: the ops that build them from M_A, M_W (transpose,
  eye) are in the outer graph, none in the `tf.while_loop` body, which has exactly the
  three matmuls of one step (x U, h A^T, h W^T) and (in inference) reads no variable;
- inference mode has no random op anywhere (nor a variable write: the seed generator does
  not advance); training mode draws inside the loop body, fresh at every step.
"""

from __future__ import annotations

import collections

import keras
import pytest
import tensorflow as tf

from keras_nrnn import SDERNN, LipschitzCell, NoisyLipschitzCell

UNITS, FEATURES, T = 4, 2, 5
CONTROL_FLOW = {"StatelessWhile", "StatelessIf", "StatelessCase"}
FORMING_OPS = ("Transpose", "MatrixDiagV3", "ConcatV2")


def traced(layer, training: bool, shape=(None, T, FEATURES)):
    fn = tf.function(lambda x: layer(x, training=training))
    graph_def = fn.get_concrete_function(tf.TensorSpec(shape, tf.float32)).graph.as_graph_def()
    outer = collections.Counter(node.op for node in graph_def.node)
    functions = {
        f.signature.name: collections.Counter(node.op for node in f.node_def)
        for f in graph_def.library.function
    }
    return outer, functions


def while_bodies(functions):
    bodies = [ops for name, ops in functions.items() if "while_body" in name]
    assert bodies, f"no while-loop body among {sorted(functions)}"
    return bodies


def random_ops(counter):
    return {op: n for op, n in counter.items()
            if "Random" in op or (op.startswith("Stateless") and op not in CONTROL_FLOW)}


def noisy_cell(scheme="euler_maruyama", **kwargs):
    return NoisyLipschitzCell(UNITS, scheme=scheme, additive_noise=0.1,
                              multiplicative_noise=0.1, seed=1, **kwargs)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("scheme", ["euler_maruyama", "tamed", "research"])
def test_a_and_w_formed_outside_the_loop(training, scheme):
    layer = keras.layers.RNN(noisy_cell(scheme, learnable_dt="per_unit"))
    layer.build((None, T, FEATURES))
    outer, functions = traced(layer, training)
    # The parametrization is in the outer graph: two transposes (M^T) and two eyes.
    assert outer["MatrixDiagV3"] == 2 and outer["Transpose"] >= 2, outer
    (body,) = while_bodies(functions)
    for op in FORMING_OPS:
        assert body[op] == 0, (op, body)
    assert body["MatMul"] == 3, body  # h @ A^T, h @ W^T and x @ U, nothing else
    if not training:
        # No weight is read per step: U, b and the learnable dt come from the cache too.
        assert body["ReadVariableOp"] == 0, body
        # Nor is a product sliced: a fused h @ [A^T | W^T] and its slices were slower.
        assert body["StridedSlice"] == 0, body


def test_stacked_and_bidirectional_also_form_once():
    stacked = keras.layers.RNN(keras.layers.StackedRNNCells([LipschitzCell(UNITS),
                                                             LipschitzCell(UNITS)]))
    bidirectional = keras.layers.Bidirectional(keras.layers.RNN(LipschitzCell(UNITS)))
    for layer, eyes in ((stacked, 4), (bidirectional, 4)):
        layer.build((None, T, FEATURES))
        outer, functions = traced(layer, training=False)
        assert outer["MatrixDiagV3"] == eyes, outer
        bodies = while_bodies(functions)
        for body in bodies:
            assert all(body[op] == 0 for op in FORMING_OPS), body
        # Three matmuls per cell per step.
        assert sum(body["MatMul"] for body in bodies) == 6


@pytest.mark.parametrize("scheme", ["euler_maruyama", "tamed", "research"])
def test_inference_graph_has_no_random_op(scheme):
    layer = keras.layers.RNN(noisy_cell(scheme))
    layer.build((None, T, FEATURES))
    outer, functions = traced(layer, training=False)
    assert random_ops(outer) == {}
    for name, ops in functions.items():
        assert random_ops(ops) == {}, name
    everything = sum(functions.values(), outer)
    assert everything["AssignVariableOp"] == 0  # the seed generator is not advanced


# A step draws all its variates with one uniform draw (keras_nrnn.brownian); normals are
# ndtri(uniform).
@pytest.mark.parametrize("scheme", ["euler_maruyama", "tamed", "research"])
def test_training_graph_draws_inside_the_loop(scheme):
    layer = keras.layers.RNN(noisy_cell(scheme))
    layer.build((None, T, FEATURES))
    _, functions = traced(layer, training=True)
    (body,) = while_bodies(functions)
    drawn = random_ops(body)
    assert drawn, body
    assert drawn == {"StatelessRandomUniformV2": 1}, drawn
    assert body["Ndtri"] == 1, body
    assert body["AssignVariableOp"] >= 1  # the generator advances at every step


@pytest.mark.parametrize("scheme", ["euler_maruyama", "research"])
def test_sdernn_draws_the_whole_sequence_before_its_loop(scheme):
    layer = SDERNN(noisy_cell(scheme))
    layer.build((None, T, FEATURES))
    outer, functions = traced(layer, training=True)
    (body,) = while_bodies(functions)
    assert random_ops(body) == {} and body["AssignVariableOp"] == 0, body
    assert body["Ndtri"] == 0, body
    everything = sum((c for n, c in functions.items() if "while_body" not in n), outer)
    assert random_ops(everything) == {"StatelessRandomUniformV2": 1}, everything
    assert everything["AssignVariableOp"] == 1  # the keys of the sequence, reserved once


def test_deterministic_cell_training_graph_has_no_random_op():
    layer = keras.layers.RNN(LipschitzCell(UNITS))
    layer.build((None, T, FEATURES))
    outer, functions = traced(layer, training=True)
    assert random_ops(sum(functions.values(), outer)) == {}
