"""`keras.distribution.DataParallel` (JAX backend) with a keras_nrnn cell.

A deterministic LipschitzCell model trains data-parallel over two host CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=2`) in a subprocess with
`KERAS_BACKEND=jax`, and ends with the weights of the same training on one device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("jax_data_parallel_script.py")


@pytest.mark.timeout(600)
def test_lipschitz_model_trains_with_data_parallel_on_two_jax_devices():
    pytest.importorskip("jax")
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True, text=True, timeout=500, env=env, cwd=str(ROOT),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (r["backend"], r["devices"]) == ("jax", 2)
    # The variables live on both devices (replicated by DataParallel), not on one.
    assert (r["dp_devices"], r["single_devices"]) == (2, 1)
    assert all(np.isfinite(r["loss"]))

    def max_diff(a, b):
        pairs = zip(a, b, strict=True)
        return max(float(np.abs(np.array(p) - np.array(q)).max()) for p, q in pairs)

    # Same weights as one device with the same global batch (float32 summation order aside),
    # and training moved them.
    assert max_diff(r["dp"], r["single"]) < 1e-5
    assert max_diff(r["dp"], r["initial"]) > 1e-3
