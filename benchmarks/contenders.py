"""The registry of contenders: named implementations the harness measures.

A contender knows how to make zero-argument callables for a training step and for inference;
the harness only times callables, so a new implementation (a fast layer, an exported model, a
server client) is added by writing one `Contender` subclass and one `register(...)` call, with no
change to the harness or the report.

Built-in contenders (registered lazily: their modules are imported only when used):

| name | side | group | measures |
|---|---|---|---|
| torch-loop | baseline | torch | training, inference, memory |
| torch-loop-1thread | baseline (reference) | torch | training, inference with 1 thread |
| keras-rnn-cell | ours | keras | training (jit_compile=False), inference (tf.function) |
| keras-rnn-cell-xla | ours | keras | training (jit_compile=True), inference (XLA tf.function) |
| keras-rnn-cell-predict | ours | keras | inference via model.predict (reference only) |
| keras-sdernn-xla | ours | keras | `SDERNN` (fast path), jit_compile=True: all figures |
| keras-sdernn | ours | keras | `SDERNN`, jit_compile=False: training, inference |
| keras-sdernn-bf16 | ours | keras | `SDERNN`, jit_compile=False, mixed_bfloat16: training only |
| savedmodel | ours | exported | inference of `--savedmodel DIR` |
| onnx | ours | exported | inference of `--onnx FILE` with onnxruntime |
| onnx-1thread | ours | exported | the same, 1 intra-op thread (the server's setting) |
"""

from __future__ import annotations

import dataclasses
import importlib
import statistics
import time
from collections.abc import Callable

from benchmarks.config import ECG, ECGConfig

BASELINE = "baseline"
OURS = "ours"


class ContenderUnavailableError(RuntimeError):
    """A contender cannot run here (missing package, flag not given...); the message says why."""


@dataclasses.dataclass(frozen=True)
class Options:
    """What a contender factory may need.

    Args:
        config: model hyperparameters.
        seed: seed for weights, data and noise.
        savedmodel: exported SavedModel directory (`--savedmodel`), or None.
        onnx: ONNX file (`--onnx`), or None.

    Example:

    >>> Options().seed
    0
    """

    config: ECGConfig = ECG
    seed: int = 0
    savedmodel: str | None = None
    onnx: str | None = None


class Contender:
    """Base class: an implementation being measured.

    Subclasses override the `make_*` methods they support; the defaults return None
    ("not measured by this contender").

    Args:
        name: registry name.
        side: `BASELINE` or `OURS`.
        options: the shared `Options`.

    Example:

    >>> Contender("x", OURS, Options()).make_inference(1, 140) is None
    True
    """

    #: True if the callables return their own duration in seconds (worker processes).
    self_timed: bool = False

    def __init__(self, name: str, side: str, options: Options) -> None:
        if side not in (BASELINE, OURS):
            raise ValueError(f"Argument `side` must be {BASELINE!r} or {OURS!r}; received {side!r}")
        self.name = name
        self.side = side
        self.options = options

    def make_train_step(
        self, batch: int, timesteps: int, noisy: bool = True
    ) -> Callable[[], object] | None:
        """A blocking callable running one training step, or None if not supported.

        Args:
            batch: sequences per step.
            timesteps: sequence length.
            noisy: True for the noisy RNN, False for the deterministic Lipschitz RNN.
        """
        return None

    def make_inference(self, batch: int, timesteps: int) -> Callable[[], object] | None:
        """A blocking callable running inference (no noise), or None if not supported.

        Args:
            batch: sequences per call.
            timesteps: sequence length.
        """
        return None

    def make_inference_burst(
        self, batch: int, timesteps: int, calls: int
    ) -> Callable[[], float] | None:
        """A callable running `calls` inferences back to back and returning the median
        seconds of one (what a busy server sees: caches and thread pools warm), or None.

        Args:
            batch: sequences per call.
            timesteps: sequence length.
            calls: consecutive calls per sample, >= 1.
        """
        fn = self.make_inference(batch, timesteps)
        if fn is None:
            return None

        def burst() -> float:
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return statistics.median(times)

        return burst

    def release(self) -> None:
        """Free framework state after a figure (e.g. Keras sessions). Optional."""


@dataclasses.dataclass(frozen=True)
class ContenderSpec:
    """A registry entry.

    Args:
        name: unique name used on the command line and in results.
        side: `BASELINE` or `OURS`.
        group: "torch", "keras" or "exported" (what `--only` selects; "keras" and
            "exported" need no torch).
        factory: "module:function" taking (name, Options) and returning a `Contender`
            (imported only when the contender is created), or a callable.
        description: one line for `--list` and the report.
        default: run when no `--contenders` are given.
        memory: include in the peak-memory figure.

    Example:

    >>> ContenderSpec("x", OURS, "keras", "m:f", "demo").group
    'keras'
    """

    name: str
    side: str
    group: str
    factory: str | Callable[[str, Options], Contender]
    description: str
    default: bool = True
    memory: bool = False


_REGISTRY: dict[str, ContenderSpec] = {}


def register(spec: ContenderSpec, overwrite: bool = False) -> ContenderSpec:
    """Add a contender to the registry.

    Args:
        spec: the entry.
        overwrite: replace an existing entry of the same name.

    Returns:
        The spec.

    Example:

    >>> _ = register(ContenderSpec("demo", OURS, "keras", "m:f", "demo"), overwrite=True)
    >>> unregister("demo")
    """
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"Argument `spec.name` must be new; {spec.name!r} is already registered")
    if spec.side not in (BASELINE, OURS):
        raise ValueError(
            f"Argument `spec.side` must be {BASELINE!r} or {OURS!r}; received {spec.side!r}"
        )
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a contender (no error if absent)."""
    _REGISTRY.pop(name, None)


def registry() -> dict[str, ContenderSpec]:
    """A copy of the registry, in registration order."""
    return dict(_REGISTRY)


def get_spec(name: str) -> ContenderSpec:
    """The spec of `name`, or a `ValueError` listing the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Argument `name` must be a registered contender ({', '.join(_REGISTRY)}); "
            f"received name={name!r}"
        ) from None


def create(name: str, options: Options) -> Contender:
    """Instantiate contender `name`.

    Raises:
        ContenderUnavailableError: it cannot run here (the message says why).
    """
    spec = get_spec(name)
    factory = spec.factory
    if isinstance(factory, str):
        module_name, _, attr = factory.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            raise ContenderUnavailableError(str(err)) from err
        factory = getattr(module, attr)
    return factory(name, options)


def select(
    only: str | None = None, names: list[str] | None = None
) -> list[ContenderSpec]:
    """Pick the contenders to run.

    Args:
        only: None/"all" (every default contender), "keras" (groups that need no torch:
            keras and exported) or "torch" (the torch group).
        names: explicit contender names (overrides the defaults; still filtered by `only`).

    Returns:
        The chosen specs, baseline first.

    Example:

    >>> [s.name for s in select("torch")]
    ['torch-loop', 'torch-loop-1thread']
    """
    groups = {None: None, "all": None, "keras": {"keras", "exported"}, "torch": {"torch"}}
    if only not in groups:
        raise ValueError(
            f"Argument `only` must be one of all, keras, torch; received only={only!r}"
        )
    wanted = groups[only]
    specs = [get_spec(n) for n in names] if names else [s for s in _REGISTRY.values() if s.default]
    specs = [s for s in specs if wanted is None or s.group in wanted]
    return sorted(specs, key=lambda s: s.side != BASELINE)


def _register_builtins() -> None:
    builtins = [
        ContenderSpec(
            "torch-loop", BASELINE, "torch", "benchmarks.torch_baseline:create",
            "PyTorch, paper research-code structure (Python loop, U(x_t) per step)",
            memory=True,
        ),
        ContenderSpec(
            "torch-loop-1thread", BASELINE, "torch", "benchmarks.torch_baseline:create",
            "reference: torch-loop with torch.set_num_threads(1) (robust to a loaded machine)",
        ),
        ContenderSpec(
            "keras-rnn-cell", OURS, "keras", "benchmarks.keras_side:create",
            "keras.layers.RNN(NoisyLipschitzCell), compile(jit_compile=False), tf.function infer",
            memory=True,
        ),
        ContenderSpec(
            "keras-rnn-cell-xla", OURS, "keras", "benchmarks.keras_side:create",
            "keras.layers.RNN(NoisyLipschitzCell), compile(jit_compile=True), XLA infer",
            memory=True,
        ),
        ContenderSpec(
            "keras-sdernn-xla", OURS, "keras", "benchmarks.keras_side:create",
            "keras_nrnn.SDERNN(NoisyLipschitzCell) (fast path), compile(jit_compile=True)",
            memory=True,
        ),
        ContenderSpec(
            "keras-sdernn", OURS, "keras", "benchmarks.keras_side:create",
            "keras_nrnn.SDERNN(NoisyLipschitzCell) (fast path), compile(jit_compile=False)",
        ),
        ContenderSpec(
            "keras-sdernn-bf16", OURS, "keras", "benchmarks.keras_side:create",
            "keras-sdernn under the mixed_bfloat16 policy (training only; oneDNN's bf16 "
            "matmuls, AMX where the CPU has it)",
        ),
        ContenderSpec(
            "keras-rnn-cell-predict", OURS, "keras", "benchmarks.keras_side:create",
            "model.predict (reference for inference only)",
        ),
        ContenderSpec(
            "savedmodel", OURS, "exported", "benchmarks.exported:create",
            "exported SavedModel (--savedmodel DIR), serving signature via tf.saved_model.load",
        ),
        ContenderSpec(
            "onnx", OURS, "exported", "benchmarks.exported:create",
            "exported ONNX (--onnx FILE) in onnxruntime, 2 intra-op threads",
        ),
        ContenderSpec(
            "onnx-1thread", OURS, "exported", "benchmarks.exported:create",
            "exported ONNX (--onnx FILE) in onnxruntime, 1 intra-op thread (as the server)",
        ),
    ]
    for spec in builtins:
        register(spec, overwrite=True)


_register_builtins()
