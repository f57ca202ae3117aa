"""Reports of an experiment: `results.json`, `results.md` (with the paper's figures) and
`robustness.png` (accuracy against perturbation strength, one line per model, a band of one
standard deviation over seeds, one panel per perturbation kind, like the paper's Figure 2).

Everything is written atomically (`atomic_io`). Accuracies are fractions in the JSON
and percentages in the Markdown table and the plot.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from atomic_io import atomic_write_bytes, atomic_write_text

__all__ = [
    "KIND_LABELS",
    "PAPER_ECG_TABLE3",
    "markdown_table",
    "plot_robustness",
    "write_results_json",
    "write_results_md",
]

KIND_LABELS = {
    "white_noise": ("additive white noise", "σ"),
    "multiplicative_noise": ("multiplicative white noise", "σ_M"),
    "salt_and_pepper": ("salt and pepper", "α"),
    "fgsm": ("adversarial (FGSM)", "r"),
}
_SHORT = {"white_noise": "s", "multiplicative_noise": "sM", "salt_and_pepper": "a", "fgsm": "r"}

# Lim et al. (2021), Table 3: ECG5000 test accuracy (%), mean of 10 seeds.
PAPER_ECG_TABLE3: dict[str, dict[str, Any]] = {
    "Lipschitz RNN": {
        "clean": 97.7,
        "white_noise": {"0.4": 97.4, "0.8": 95.1, "1.2": 88.9},
        "multiplicative_noise": {"0.4": 97.6, "0.8": 97.0, "1.2": 95.6},
    },
    "NRNN 0.03/0.06": {
        "clean": 97.7,
        "white_noise": {"0.4": 97.5, "0.8": 96.3, "1.2": 92.6},
        "multiplicative_noise": {"0.4": 97.7, "0.8": 97.3, "1.2": 96.5},
    },
}


def write_results_json(path: str | os.PathLike, results: Mapping[str, Any]) -> Path:
    """Write `results` as indented JSON, atomically.

    Example:

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "results.json"
    >>> json.loads(write_results_json(p, {"a": 1}).read_text())
    {'a': 1}
    """
    return atomic_write_text(path, json.dumps(results, indent=2, sort_keys=False) + "\n")


def _columns(grid: Mapping[str, Sequence[float]]) -> list[tuple[str, str | None, str]]:
    cols: list[tuple[str, str | None, str]] = [("clean", None, "clean")]
    for kind, strengths in grid.items():
        for s in strengths:
            cols.append((kind, f"{float(s):g}", f"{_SHORT.get(kind, kind)}={float(s):g}"))
    return cols


def _lookup(tree: Mapping[str, Any], kind: str, key: str | None) -> float | None:
    node = tree.get(kind)
    if key is not None:
        node = node.get(key) if isinstance(node, Mapping) else None
    if node is None:
        return None
    value = float(node)
    return None if math.isnan(value) else value


def markdown_table(
    models: Mapping[str, Mapping[str, Any]],
    grid: Mapping[str, Sequence[float]],
    paper: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """A Markdown table: one row per model ("mean ± std" %), then the paper's rows if given.

    Args:
        models: `label -> {"n": seeds, "mean": tree, "std": tree}` (fractions).
        grid: the perturbation grid (column order).
        paper: `label -> tree` in percent; missing entries print as "–".

    Returns:
        The table as text.

    Example:

    >>> row = {"n": 2, "mean": {"clean": 0.95}, "std": {"clean": 0.01}}
    >>> print(markdown_table({"NRNN": row}, {}))
    | model | seeds | clean |
    |---|---|---|
    | NRNN (ours) | 2 | 95.00 ± 1.00 |
    """
    cols = _columns(grid)
    lines = [
        "| model | seeds | " + " | ".join(c[2] for c in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for label, agg in models.items():
        cells = []
        for kind, key, _ in cols:
            mean = _lookup(agg["mean"], kind, key)
            std = _lookup(agg["std"], kind, key)
            cells.append("–" if mean is None else f"{100 * mean:.2f} ± {100 * (std or 0):.2f}")
        lines.append(f"| {label} (ours) | {agg['n']} | " + " | ".join(cells) + " |")
    for label, tree in (paper or {}).items():
        cells = []
        for kind, key, _ in cols:
            value = _lookup(tree, kind, key)
            cells.append("–" if value is None else f"{value:.1f}")
        lines.append(f"| {label} (paper) | 10 | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results_md(
    path: str | os.PathLike,
    models: Mapping[str, Mapping[str, Any]],
    grid: Mapping[str, Sequence[float]],
    *,
    title: str,
    command: str,
    notes: Sequence[str] = (),
    paper: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write `results.md`: the table (paper beside ours), the command and notes, atomically.

    Args:
        path: destination.
        models: as in `markdown_table`.
        grid: the perturbation grid.
        title: heading.
        command: the command line that produced the run.
        notes: extra bullet lines (data source, training time, ...).
        paper: the paper's rows.

    Returns:
        The destination as a `Path`.
    """
    random_grid = {k: v for k, v in grid.items() if k in ("white_noise", "multiplicative_noise")}
    other_grid = {k: v for k, v in grid.items() if k not in random_grid}
    parts = [
        f"# {title}",
        "",
        "Test accuracy (%), mean ± standard deviation over seeds (ddof=1). "
        "s: additive white noise σ, sM: multiplicative noise σ_M, a: salt-and-pepper α, "
        "r: FGSM step. Paper: Lim et al. (2021), Table 3, mean of 10 seeds.",
        "",
        markdown_table(models, random_grid, paper),
        "",
    ]
    if other_grid:
        parts += [
            "Salt and pepper and FGSM (no ECG figures in the paper):",
            "",
            markdown_table(models, other_grid),
            "",
        ]
    parts += ["```", command, "```", ""]
    parts += [f"- {note}" for note in notes]
    return atomic_write_text(path, "\n".join(parts).rstrip() + "\n")


def plot_robustness(
    path: str | os.PathLike,
    models: Mapping[str, Mapping[str, Any]],
    grid: Mapping[str, Sequence[float]],
    *,
    title: str = "",
) -> Path:
    """Accuracy (%) against perturbation strength: one panel per kind, one line per model,
    a band of ± one standard deviation over seeds; strength 0 is the clean accuracy.

    Args:
        path: destination `.png`.
        models: `label -> {"n", "mean", "std"}` (fractions).
        grid: the perturbation grid.
        title: figure title.

    Returns:
        The destination as a `Path`.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    kinds = list(grid)
    fig, axes = plt.subplots(
        1, max(1, len(kinds)), figsize=(4.0 * max(1, len(kinds)), 3.6), squeeze=False
    )
    for ax, kind in zip(axes[0], kinds, strict=False):
        xs = [0.0] + [float(s) for s in grid[kind]]
        for label, agg in models.items():
            means = [_lookup(agg["mean"], "clean", None)] + [
                _lookup(agg["mean"], kind, f"{s:g}") for s in xs[1:]
            ]
            stds = [_lookup(agg["std"], "clean", None)] + [
                _lookup(agg["std"], kind, f"{s:g}") for s in xs[1:]
            ]
            pts = [
                (x, 100 * m, 100 * (s or 0.0))
                for x, m, s in zip(xs, means, stds, strict=True)
                if m is not None
            ]
            if not pts:
                continue
            px, pm, ps = zip(*pts, strict=True)
            (line,) = ax.plot(px, pm, marker="o", label=f"{label} (n={agg['n']})")
            ax.fill_between(
                px,
                [m - s for m, s in zip(pm, ps, strict=True)],
                [m + s for m, s in zip(pm, ps, strict=True)],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
        name, symbol = KIND_LABELS.get(kind, (kind, "strength"))
        ax.set_title(name)
        ax.set_xlabel(symbol)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
