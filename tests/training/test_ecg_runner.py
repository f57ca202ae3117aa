"""`python -m training.ecg` end to end on a tiny model and a subset of ECG5000.

Artifacts, resume after an interruption, a repeated finished run, refusal of a folder of
another configuration, argument validation, and a missing baseline cell. (Operator errors,
`--overwrite`, extending with more seeds: `test_ecg_cli.py`.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ecg_helpers import tiny_args

from training import ecg
from training.runner import CHECKPOINT_FILE, INTERRUPT_ENV, read_checkpoint_state

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _checkpoint_arrays(seed_dir: Path) -> dict[str, np.ndarray]:
    with np.load(seed_dir / CHECKPOINT_FILE) as z:
        return {k: z[k] for k in z.files if k.startswith(("model_", "opt_"))}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("ecg") / "run"
    argv = tiny_args(out)
    assert ecg.main(argv) == 0
    return out, argv


@pytest.mark.slow
def test_end_to_end_writes_every_artifact(finished_run):
    out, _ = finished_run
    for name in ("config.json", "model.keras", "history.csv", "results.json", "results.md",
                 "robustness.png"):  # fmt: skip
        assert (out / name).is_file(), name
    seed_dir = out / "seed-0"
    for name in ("model.keras", "history.csv", CHECKPOINT_FILE, "eval.json"):
        assert (seed_dir / name).is_file(), name
    assert list((seed_dir / "tensorboard").rglob("events.out.tfevents*")), "no TensorBoard events"

    config = json.loads((out / "config.json").read_text())
    assert config["identity"]["hparams"]["units"] == 8
    assert config["identity"]["hparams"]["beta"] == 0.9  # the paper's ECG default
    assert set(config["data"]["sha256"]) == {"ECG5000_TRAIN.tsv", "ECG5000_TEST.tsv"}
    assert config["data"]["sizes"] == {"train": 64, "validation": 64, "test": 100}
    assert {"tensorflow", "keras", "keras_nrnn", "numpy"} <= set(config["versions"])

    results = json.loads((out / "results.json").read_text())
    grid = results["grid"]
    assert grid["white_noise"] == [0.4, 0.8, 1.2]
    assert grid["multiplicative_noise"] == [0.4, 0.8, 1.2]
    assert {"salt_and_pepper", "fgsm"} <= set(grid)
    nrnn = results["models"]["nrnn"]
    assert nrnn["n"] == 1
    for kind, strengths in grid.items():
        for s in strengths:
            acc = nrnn["mean"][kind][f"{s:g}"]
            assert 0.0 <= acc <= 1.0
            assert nrnn["std"][kind][f"{s:g}"] == 0.0
    # Accuracies are multiples of 1/100 on 100 test examples.
    assert nrnn["mean"]["clean"] * 100 == pytest.approx(round(nrnn["mean"]["clean"] * 100))

    history = (out / "history.csv").read_text().splitlines()
    assert history[0].startswith("model,seed,epoch")
    assert len(history) == 1 + 2  # header + 2 epochs
    md = (out / "results.md").read_text()
    assert "NRNN (ours)" in md and "(paper)" in md and "92.6" in md
    assert (out / "robustness.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.slow
def test_model_reloads_with_only_keras_nrnn(finished_run):
    out, _ = finished_run
    code = (
        "import sys, numpy as np, keras, keras_nrnn\n"
        "m = keras.saving.load_model(sys.argv[1])\n"
        "y = m.predict(np.zeros((3, 140, 1), 'float32'), verbose=0)\n"
        "print(type(m.layers[1].cell).__name__, y.shape)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out / "model.keras")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "NoisyLipschitzCell (3, 2)" in proc.stdout


@pytest.mark.slow
def test_repeating_a_finished_run_changes_nothing(finished_run, capsys):
    out, argv = finished_run
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert ecg.main(argv) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_refuses_folder_of_different_configuration(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    config = {"task": "ecg5000", "identity": {"other": 1}, "config_hash": "x"}
    (out / "config.json").write_text(json.dumps(config))
    assert ecg.main(tiny_args(out)) == ecg.EXIT_REFUSED
    err = capsys.readouterr().err
    assert "another configuration" in err and "other: 1 -> (absent)" in err


def test_refuses_non_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert ecg.main(tiny_args(out)) == ecg.EXIT_REFUSED
    assert "not a run folder" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_resume_after_interruption_continues_from_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    # Batch 16: four steps per epoch, so the replayed shuffle order matters.
    argv = tiny_args(out, "--batch-size", "16", epochs=3)
    monkeypatch.setenv(INTERRUPT_ENV, "1")
    assert ecg.main(argv) == ecg.EXIT_INTERRUPTED
    assert "Repeat the same command to resume" in capsys.readouterr().err
    state = read_checkpoint_state(out / "seed-0")
    assert state["epochs_done"] == 1
    assert [row["epoch"] for row in state["history"]] == [1]
    assert not (out / "results.json").exists()

    monkeypatch.delenv(INTERRUPT_ENV)
    assert ecg.main(argv) == 0
    assert "resumed from epoch 1" in capsys.readouterr().err
    state = read_checkpoint_state(out / "seed-0")
    assert state["epochs_done"] == 3
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3]
    rows = (out / "seed-0" / "history.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]

    # The resumed run followed the same path as an uninterrupted one (same data order, same
    # noise): the same noise-generator state and step count, and the same weights and Adam
    # moments (a different data order or noise path moves the weights by ~1e-4..1e-3).
    ref = tmp_path / "ref"
    assert ecg.main(tiny_args(ref, "--batch-size", "16", epochs=3)) == 0
    resumed, straight = _checkpoint_arrays(out / "seed-0"), _checkpoint_arrays(ref / "seed-0")
    assert resumed.keys() == straight.keys()
    integer_keys = [k for k in resumed if np.issubdtype(resumed[k].dtype, np.integer)]
    assert integer_keys, "expected the seed-generator state and the iteration counter"
    for key in resumed:
        if key in integer_keys:
            np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)
        else:
            np.testing.assert_allclose(resumed[key], straight[key], atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_compare_two_models_two_seeds(tmp_path):
    out = tmp_path / "cmp"
    argv = tiny_args(out, "--models", "nrnn,lipschitz", "--seeds", "2", epochs=1)
    assert ecg.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["nrnn", "lipschitz"]
    for name in ("nrnn", "lipschitz"):
        model = results["models"][name]
        assert model["n"] == 2
        per_seed = [model["per_seed"][s]["clean"] for s in ("0", "1")]
        assert model["mean"]["clean"] == pytest.approx(np.mean(per_seed))
        assert model["std"]["clean"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-12)
        assert (out / name / "model.keras").is_file()
        assert (out / name / "seed-1" / "model.keras").is_file()
    md = (out / "results.md").read_text()
    assert "NRNN (ours) | 2" in md and "Lipschitz RNN (ours) | 2" in md


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--units", "0"], "--units"),
        (["--dt", "-1"], "--dt"),
        (["--beta", "1.5"], "--beta"),
        (["--gamma-a", "-0.1"], "--gamma-a"),
        (["--additive-noise", "-1"], "--additive-noise"),
        (["--lr", "0"], "--lr"),
        (["--batch-size", "0"], "--batch-size"),
        (["--seeds", "0"], "--seeds"),
        (["--epochs", "0"], "--epochs"),
        (["--lr-decay-epoch", "9"], "--lr-decay-epoch"),
        (["--model", "transformer"], "--model"),
        (["--models", "nrnn,nrnn"], "--models"),
        (["--precision", "float8"], "--precision"),
        (["--compare", "--models", "nrnn"], "--compare"),
        (["--limit-train", "0"], "--limit-train"),
        (["--shard", "2/2"], "--shard"),
        (["--shard", "x"], "--shard"),
        (["--gamma", "-1"], "--gamma"),
    ],
)
def test_argument_validation(tmp_path, capsys, extra, flag):
    out = tmp_path / "never"
    assert ecg.main(tiny_args(out, *extra)) == 2
    err = capsys.readouterr().err
    assert flag in err
    assert not out.exists()


def test_missing_baseline_cell_gives_clear_error(tmp_path, monkeypatch, capsys):
    from training import models

    ghost = models.ModelSpec("nrnn", "GhostCell", True, "Ghost")
    monkeypatch.setitem(models.MODELS, "nrnn", ghost)
    out = tmp_path / "run"
    assert ecg.main(tiny_args(out)) == ecg.EXIT_REFUSED
    err = capsys.readouterr().err
    assert "keras_nrnn.GhostCell" in err and "'nrnn'" in err
    assert not (out / "seed-0").exists()


def test_default_run_uses_paper_configuration():
    from training import cli

    args = cli.parse_args(ecg.build_ecg_parser(), [])
    assert args.models == ["nrnn"]
    cell = (args.units, args.dt, args.beta, args.gamma_a, args.gamma_w)
    assert cell == (128, 0.1, 0.9, 1e-3, 1e-3)
    assert (args.additive_noise, args.multiplicative_noise) == (0.06, 0.03)
    assert (args.lr, args.batch_size, args.epochs) == (1e-3, 128, ecg.DEFAULT_EPOCHS)
    assert args.lr_decay_epoch == round(0.9 * ecg.DEFAULT_EPOCHS) + 1
    assert args.precision == "auto" and args.seeds == 1


def test_jit_default_follows_the_precision():
    """XLA by default, but not for mixed_bfloat16 on a CPU (XLA's CPU matmul has no fast bf16
    kernel); an explicit `--jit`/`--no-jit` always wins."""
    import tensorflow as tf

    from training import cli

    gpu = bool(tf.config.list_physical_devices("GPU"))
    assert cli.resolve_jit(None, "float32", True) is True
    assert cli.resolve_jit(None, "mixed_float16", True) is True
    assert cli.resolve_jit(None, "mixed_bfloat16", True) is gpu
    assert cli.resolve_jit(True, "mixed_bfloat16", True) is True
    assert cli.resolve_jit(False, "float32", True) is False
    assert cli.resolve_jit(None, "float32", False) is False
    assert cli.parse_args(ecg.build_ecg_parser(), []).jit is None  # resolved by the run


@pytest.mark.slow
def test_mixed_bfloat16_run_trains_in_bfloat16_without_xla_on_a_cpu(tmp_path):
    import keras
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("the bf16 default without XLA is for CPUs; this machine has a GPU")
    out = tmp_path / "bf16"
    assert ecg.main(tiny_args(out, "--precision", "mixed_bfloat16", epochs=1)) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["identity"]["precision"] == "mixed_bfloat16"
    assert config["jit_compile"] is False
    assert keras.config.dtype_policy().name == "float32"  # the run restores the policy
    model = keras.saving.load_model(out / "seed-0" / "model.keras")
    rnn = next(layer for layer in model.layers if hasattr(layer, "cell"))
    assert rnn.cell.compute_dtype == "bfloat16" and rnn.cell.variable_dtype == "float32"
    assert model.get_layer("logits").compute_dtype == "float32"
    clean = json.loads((out / "results.json").read_text())["models"]["nrnn"]["mean"]["clean"]
    assert 0.0 <= clean <= 1.0
