"""Timing utilities: warm-up, alternating repeated runs, medians, ratios and table formatting.

Several contenders timed for one figure are run *alternately* within one loop (round r runs
every contender once, in an order rotated each round), so that all of them see the same machine
load; the machine is shared, and a burst of someone else's work then hurts all sides alike
instead of only the one that happened to be running.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence

HIGHER_IS_BETTER = "higher is better"
LOWER_IS_BETTER = "lower is better"


@dataclasses.dataclass
class Timing:
    """Wall-clock samples of one callable.

    Args:
        name: contender name.
        samples_s: seconds per call, one entry per timed call (warm-up excluded).
        items_per_call: sequences processed per call (batch size), for throughput.

    Example:

    >>> t = Timing("a", [0.1, 0.3, 0.2], items_per_call=10)
    >>> round(t.median_s, 3), round(t.items_per_s, 1)
    (0.2, 50.0)
    """

    name: str
    samples_s: list[float]
    items_per_call: int = 1

    @property
    def median_s(self) -> float:
        """Median seconds per call."""
        return median(self.samples_s)

    @property
    def median_ms(self) -> float:
        """Median milliseconds per call."""
        return 1000.0 * self.median_s

    @property
    def items_per_s(self) -> float:
        """Throughput from the median call time."""
        return self.items_per_call / self.median_s

    @property
    def spread(self) -> float:
        """Relative interquartile range (IQR / median), a noise indicator."""
        return relative_iqr(self.samples_s)

    def to_dict(self) -> dict:
        """A JSON-friendly summary."""
        return {
            "median_ms": self.median_ms,
            "items_per_s": self.items_per_s,
            "items_per_call": self.items_per_call,
            "relative_iqr": self.spread,
            "samples_ms": [1000.0 * s for s in self.samples_s],
        }


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence.

    Args:
        values: the numbers.

    Returns:
        Their median.

    Example:

    >>> median([3.0, 1.0, 2.0, 10.0])
    2.5
    """
    if not values:
        raise ValueError("Argument `values` must be non-empty; received values=[]")
    return float(statistics.median(values))


def relative_iqr(values: Sequence[float]) -> float:
    """Interquartile range divided by the median (0 for fewer than 2 values).

    Args:
        values: the numbers.

    Returns:
        (q3 - q1) / median.

    Example:

    >>> relative_iqr([1.0, 1.0, 1.0])
    0.0
    """
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    m = median(values)
    return (q[2] - q[0]) / m if m else math.inf


def ratio(ours: float | None, baseline: float | None) -> float | None:
    """ours / baseline, or None when either is missing or baseline is 0.

    Args:
        ours: the figure of our contender.
        baseline: the figure of the baseline.

    Returns:
        The ratio, or None.

    Example:

    >>> ratio(3.0, 2.0)
    1.5
    >>> ratio(None, 2.0) is None
    True
    """
    if ours is None or baseline is None or baseline == 0:
        return None
    return ours / baseline


def verdict(r: float | None, direction: str, tolerance: float = 0.05) -> str:
    """Say whether `ours` is better, worse or on par given a ratio and its direction.

    Args:
        r: ours / baseline.
        direction: `HIGHER_IS_BETTER` or `LOWER_IS_BETTER`.
        tolerance: relative band treated as "on par".

    Returns:
        "better", "worse", "on par" or "n/a".

    Example:

    >>> verdict(2.0, HIGHER_IS_BETTER), verdict(2.0, LOWER_IS_BETTER)
    ('better', 'worse')
    """
    if direction not in (HIGHER_IS_BETTER, LOWER_IS_BETTER):
        raise ValueError(
            f"Argument `direction` must be {HIGHER_IS_BETTER!r} or {LOWER_IS_BETTER!r}; "
            f"received direction={direction!r}"
        )
    if r is None or not math.isfinite(r):
        return "n/a"
    if abs(r - 1.0) <= tolerance:
        return "on par"
    better = r > 1.0 if direction == HIGHER_IS_BETTER else r < 1.0
    return "better" if better else "worse"


def time_alternating(
    fns: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 2,
    repeats: int = 10,
    items_per_call: int | Mapping[str, int] = 1,
    min_time_s: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
    progress: Callable[[str], None] | None = None,
    self_timed: bool = False,
    max_extra_s: float = 30.0,
) -> dict[str, Timing]:
    """Time several callables alternately, round by round.

    Each callable must block until its work is finished (e.g. fetch a result to numpy).

    Args:
        fns: name -> zero-argument callable.
        warmup: untimed calls per callable before timing (tracing, compilation, caches).
        repeats: timed rounds; each round calls every callable once, in an order rotated by
            one position per round so no contender always runs first.
        items_per_call: sequences per call (one number for all, or per name).
        min_time_s: keep adding rounds beyond `repeats` until the slowest contender has
            accumulated this much timed wall-clock (0 disables; capped at 4 x repeats rounds
            and by `max_extra_s`).
        clock: the clock (injectable for tests).
        progress: optional callback receiving one-line progress messages.
        self_timed: the callables return their own duration in seconds (e.g. measured
            inside a worker process, without the inter-process round trip); `clock` is unused.
        max_extra_s: no extra round (beyond `repeats`) starts once the timed rounds have taken
            this many seconds in total, so a slow contender on a loaded machine cannot drag
            the run out.

    Returns:
        name -> `Timing`, in the order of `fns`.

    Example:

    >>> out = time_alternating({"a": lambda: None, "b": lambda: None}, warmup=0, repeats=3)
    >>> sorted(out), len(out["a"].samples_s)
    (['a', 'b'], 3)
    """
    if repeats < 1:
        raise ValueError(f"Argument `repeats` must be >= 1; received repeats={repeats}")
    if warmup < 0:
        raise ValueError(f"Argument `warmup` must be >= 0; received warmup={warmup}")
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
        if progress is not None and warmup:
            progress(f"warmed up {name}")
    samples: dict[str, list[float]] = {name: [] for name in names}
    max_rounds = max(repeats, 4 * repeats if min_time_s > 0 else repeats)
    rounds = 0
    while rounds < max_rounds:
        if rounds >= repeats:
            if min(sum(samples[n]) for n in names) >= min_time_s:
                break
            if sum(sum(v) for v in samples.values()) >= max_extra_s:
                break
        shift = rounds % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            if self_timed:
                samples[name].append(float(fns[name]()))
                continue
            start = clock()
            fns[name]()
            samples[name].append(clock() - start)
        rounds += 1
    out = {}
    for name in names:
        n_items = items_per_call if isinstance(items_per_call, int) else items_per_call[name]
        out[name] = Timing(name, samples[name], n_items)
    if progress is not None:
        summary = ", ".join(f"{n} {out[n].median_ms:.2f} ms" for n in names)
        progress(f"timed {rounds} rounds: {summary}")
    return out


def format_number(value: float | None, digits: int = 3) -> str:
    """Format a figure with `digits` significant digits, thousands separators for large ones.

    Args:
        value: the number (None prints as "-").
        digits: significant digits.

    Returns:
        The text.

    Example:

    >>> format_number(12345.6), format_number(0.012345), format_number(None)
    ('12,346', '0.0123', '-')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    decimals = digits - 1 - math.floor(math.log10(abs(value)))
    return f"{value:.{max(decimals, 0)}f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    """Render rows as an aligned text table or a Markdown table.

    Args:
        headers: column titles.
        rows: cells as text, one sequence per row.
        markdown: Markdown pipes if True, else space-aligned columns.

    Returns:
        The table text (no trailing newline).

    Example:

    >>> print(format_table(["a", "b"], [["1", "22"]], markdown=True))
    | a | b |
    |---|---|
    | 1 | 22 |
    """
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(
                f"Argument `rows` must have {len(headers)} cells per row; received {len(row)}"
            )
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def log(message: str) -> None:
    """Print a progress line to stderr with a timestamp (stdout keeps the table)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
