"""`keras_nrnn.analysis` on the JAX and PyTorch backends gives TensorFlow's numbers.

Each backend runs in its own process (Keras picks its backend at import time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from analysis_helpers import make_model
from keras_nrnn import analysis
model, _ = make_model(3, timesteps=4, seed=0, scale=2.0, dtype="float32")
x = np.random.default_rng(0).normal(size=(6, 4, 1)).astype("float32")
y = np.array([0, 1, 0, 1, 1, 0])
print(json.dumps({
    "norms": analysis.jacobian_product_norms(model, x).tolist(),
    "hessian": analysis.top_hessian_eigenvalue(model, x, y, iterations=60, tolerance=1e-6)[
        "eigenvalue"],
    "fisher_rao": analysis.fisher_rao_norm(model, x, y),
    "regularizer": analysis.implicit_regularizer(model, x, noise_levels=(0.1, 0.1)).tolist(),
}))
"""


def _run(backend: str) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(HERE)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow is the reference")
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_matches_tensorflow(backend):
    reference, other = _run("tensorflow"), _run(backend)
    np.testing.assert_allclose(other["norms"], reference["norms"], rtol=1e-4)
    np.testing.assert_allclose(other["regularizer"], reference["regularizer"], rtol=1e-4)
    assert other["fisher_rao"] == pytest.approx(reference["fisher_rao"], rel=1e-4)
    assert other["hessian"] == pytest.approx(reference["hessian"], rel=1e-3)
