"""Run by `test_jax_data_parallel.py` with KERAS_BACKEND=jax and two host devices
(XLA_FLAGS=--xla_force_host_platform_device_count=2): train a deterministic LipschitzCell model
with `keras.distribution.DataParallel` over both devices, then on one device, and print the
weights of both as one JSON line.
"""

import json

import jax
import keras
import numpy as np

import keras_nrnn


def build() -> keras.Model:
    return keras.Sequential([
        keras.Input((12, 1)),
        keras.layers.RNN(keras_nrnn.LipschitzCell(8, dt=0.1)),
        keras.layers.Dense(2),
    ])  # fmt: skip


def train(distributed: bool) -> tuple[list, list, int]:
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices) if distributed else None
    )
    keras.utils.set_random_seed(0)
    model = build()
    model.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 12, 1)).astype("float32")
    y = (x.mean(axis=(1, 2)) > 0).astype("int64")
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    kernel = model.layers[0].cell.trainable_variables[0]
    weights = [np.asarray(w).tolist() for w in model.get_weights()]
    return weights, history.history["loss"], len(kernel.value.sharding.device_set)


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    initial = build()
    dp, loss, dp_devices = train(True)
    single, _, single_devices = train(False)
    print(json.dumps({
        "backend": keras.backend.backend(),
        "devices": len(jax.devices()),
        "dp": dp,
        "single": single,
        "initial": [np.asarray(w).tolist() for w in initial.get_weights()],
        "loss": loss,
        "dp_devices": dp_devices,
        "single_devices": single_devices,
    }))  # fmt: skip
