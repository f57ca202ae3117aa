"""The worked example of docs/adding-a-cell.md runs, and registering its cell really makes it a
training model, a harness-tested layer and a `.keras` round trip."""

from __future__ import annotations

import pathlib
import re

import keras
import numpy as np

from keras_nrnn import registry

DOC = pathlib.Path(__file__).parents[2] / "docs" / "adding-a-cell.md"


def test_adding_a_cell_example_runs_and_registers(tmp_path):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    namespace: dict = {}
    before = dict(registry._CELLS)
    try:
        exec(compile(code, str(DOC), "exec"), namespace)
        assert "leaky" in registry.models() and "noisy_leaky" in registry.models()
        from training.models import build_model  # builds the new model by name

        built = build_model("noisy_leaky", {"units": 4, "additive_noise": 0.1},
                            timesteps=5, features=3)
        assert type(built.get_layer("rnn").cell).__name__ == "NoisyLeakyCell"
        cell = namespace["LeakyCell"](4, additive_noise=0.1, seed=0)
        model = keras.Sequential([keras.Input((5, 3)), keras.layers.RNN(cell)])
        path = tmp_path / "leaky.keras"
        model.save(path)
        x = np.ones((2, 5, 3), "float32")
        np.testing.assert_allclose(keras.saving.load_model(path)(x), model(x), atol=1e-6)
    finally:
        registry._CELLS.clear()
        registry._CELLS.update(before)
