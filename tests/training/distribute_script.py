"""Run by `test_distribute.py` in a fresh process: two logical CPU replicas need a TensorFlow
whose devices are not initialised yet. Writes its measurements to OUT_DIR/<what>.json.

    python tests/training/distribute_script.py noise|train OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HP = {"units": 8, "dt": 0.1, "additive_noise": 0.3, "multiplicative_noise": 0.1}
T = 12


def per_replica_outputs(strategy, seed: int, layer: str, training: bool = True) -> list:
    """Outputs of every replica on the SAME input batch (first two calls)."""
    import keras
    import tensorflow as tf

    from training.models import build_model

    keras.utils.set_random_seed(seed)
    with strategy.scope():
        model = build_model("nrnn", HP, seed=seed, timesteps=T, classes=2, layer=layer)
    x = tf.constant(np.linspace(-1, 1, 4 * T, dtype="float32").reshape(4, T, 1))
    rnn = model.get_layer("rnn")

    @tf.function
    def step():
        return strategy.run(lambda: rnn(x, training=training))

    calls = [strategy.experimental_local_results(step()) for _ in range(2)]
    return [[np.asarray(c[r]).tolist() for c in calls] for r in range(len(calls[0]))]


def noise() -> dict:
    import tensorflow as tf

    from training import distribute

    mirrored = distribute.make_strategy("mirrored")
    single = tf.distribute.get_strategy()
    out = {"replicas": mirrored.num_replicas_in_sync}
    for layer in ("sdernn", "rnn"):  # keys reserved per sequence / drawn per step
        out[layer] = {
            "folded": per_replica_outputs(mirrored, 5, layer),
            "folded_again": per_replica_outputs(mirrored, 5, layer),
            "inference": per_replica_outputs(mirrored, 5, layer, training=False),
            "single": per_replica_outputs(single, 5, layer),
        }
    return out


def train(out: Path) -> dict:
    import keras

    from training import distribute
    from training.models import build_model
    from training.runner import CHECKPOINT_FILE, TrainSettings, train_seed

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, T, 1)).astype("float32")
    y = (x.mean(axis=(1, 2)) > 0).astype("int64")
    settings = TrainSettings(epochs=2, batch_size=16, lr=1e-2, lr_decay_epoch=99, progress=False)
    mirrored = distribute.make_strategy("mirrored")
    weights = {}
    for name, model, strategy in (
        ("nrnn_mirrored", "nrnn", mirrored),
        ("nrnn_mirrored_again", "nrnn", mirrored),
        ("lipschitz_mirrored", "lipschitz", mirrored),
        ("lipschitz_single", "lipschitz", None),
    ):
        train_seed(
            lambda model=model: build_model(model, HP, seed=3, timesteps=T, classes=2),
            (x, y), (x[:16], y[:16]), out / name, settings, seed=3, tensorboard=False,
            strategy=strategy,
        )  # fmt: skip
        keras.backend.clear_session()
        with np.load(out / name / CHECKPOINT_FILE) as z:
            weights[name] = [z[k].tolist() for k in sorted(z.files) if k.startswith("model_")]
    keras.utils.set_random_seed(3)  # as train_seed does before building
    initial = build_model("lipschitz", HP, seed=3, timesteps=T, classes=2)
    weights["lipschitz_initial"] = [np.asarray(v.numpy()).tolist() for v in initial.variables]
    return weights


if __name__ == "__main__":
    # Only when run as a script (pytest's doctest collection imports this file too): the
    # logical devices must be set before TensorFlow initialises them.
    from tf_startup import import_tensorflow_quietly

    import_tensorflow_quietly()
    from training import distribute

    distribute.configure_cpu_replicas(2)
    what, out = sys.argv[1], Path(sys.argv[2])
    result = noise() if what == "noise" else train(out)
    (out / f"{what}.json").write_text(json.dumps(result))
