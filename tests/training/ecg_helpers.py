"""Helpers shared by the `python -m training.ecg` tests."""

from __future__ import annotations

from pathlib import Path


def tiny_args(out: Path, *extra: str, epochs: int = 2, tensorboard: bool = True) -> list[str]:
    """Arguments of a seconds-long run: 8 units, a few epochs, 64/64/100 examples."""
    return [
        "--units", "8",
        "--epochs", str(epochs),
        "--limit-train", "64",
        "--limit-val", "64",
        "--limit-test", "100",
        "--quiet",
        "--out", str(out),
        *([] if tensorboard else ["--no-tensorboard"]),
        *extra,
    ]  # fmt: skip
