"""The library's core tests on the JAX and PyTorch backends, from the one README test command.

Keras picks its backend once per process, so each backend runs the core subset (cells, noise,
Brownian source, schemes, `SDERNN`, serialization, v0.1 files, Keras's layer-test harness) in a
child `python -m pytest` with `KERAS_BACKEND` set. The rest of the suite (training, export,
serving, benchmarks) is TensorFlow's and runs in this process.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]
CORE = [
    "tests/keras_nrnn/test_brownian_and_noise.py",
    "tests/keras_nrnn/test_keras_harness.py",
    "tests/keras_nrnn/test_sdernn_is_an_rnn.py",
    "tests/keras_nrnn/test_schemes.py",
    "tests/keras_nrnn/test_scheme_convergence.py",
    "tests/keras_nrnn/test_serialization.py",
    "tests/keras_nrnn/test_v0_1_files.py",
    "tests/keras_nrnn/test_validation.py",
    "tests/keras_nrnn/test_lipschitz_numerics.py",
    "tests/keras_nrnn/test_baseline_cells.py",
    "tests/keras_nrnn/test_rnn_options.py",
    "tests/keras_nrnn/test_sde_rnn.py",
]


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_core_suite_passes_on_backend(backend):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header",
         "-o", "addopts=", "-rs", *CORE],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1150,
    )
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    assert out.returncode == 0, f"{backend}: {summary}\n{out.stdout[-6000:]}\n{out.stderr[-2000:]}"
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 150, summary  # the subset really ran on this backend
    print(f"{backend}: {summary}")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_library_imports_without_tensorflow(backend):
    """keras_nrnn is keras + numpy: on another backend, using it never imports TensorFlow."""
    code = (
        "import sys, numpy as np, keras, keras_nrnn\n"
        "layer = keras_nrnn.SDERNN(keras_nrnn.NoisyLipschitzCell(4, additive_noise=0.1, seed=0))\n"
        "layer(np.ones((2, 3, 1), 'float32'), training=True)\n"
        "assert 'tensorflow' not in sys.modules\n"
        "print('ok')\n"
    )
    env = {**os.environ, "KERAS_BACKEND": backend}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
