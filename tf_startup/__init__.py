"""Quiet TensorFlow start-up for the command-line tools (stdlib only; imports TensorFlow lazily).

Shared by `training` and `export` (which must not import `training`).

On a machine without a GPU, importing TensorFlow 2.21 and its first device query print banners
that no environment variable silences: absl's "All log messages before absl::InitializeLog()"
warning, the oneDNN notice and "Could not find cuda drivers" (both twice, once per TensorFlow
shared library), and "failed call to cuInit" (an ERROR line, so `TF_CPP_MIN_LOG_LEVEL=2` keeps
it). `import_tensorflow_quietly` imports TensorFlow and Keras and lists the devices with the
process's standard error (file descriptor 2) redirected to a temporary file, then replays every
captured line except those banners: a real error printed during start-up still reaches the
user. CUDA lines are dropped only when TensorFlow itself reported that there is no CUDA driver.

Call it after the arguments are parsed (so `--help` and argument errors never pay the
start-up), before anything else imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["BANNER_PATTERNS", "CUDA_PATTERNS", "filter_banners", "import_tensorflow_quietly"]

# Printed on every start-up; never useful to the user of a command-line tool.
BANNER_PATTERNS = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(r"\] oneDNN custom operations are on"),
    re.compile(r"\] This TensorFlow binary is optimized to use available CPU instructions"),
    re.compile(r"^To enable the following instructions: .* rebuild TensorFlow"),
)
# Printed when there is no CUDA driver (dropped only if "Could not find cuda drivers" is seen).
CUDA_PATTERNS = (
    re.compile(r"\] Could not find cuda drivers on your machine"),
    re.compile(r"\] failed call to cuInit"),
)
_NO_DRIVER = CUDA_PATTERNS[0]


def filter_banners(text: str) -> str:
    """`text` without TensorFlow's start-up banner lines (see the module docstring).

    Args:
        text: captured standard error.

    Returns:
        The remaining lines, in order.

    Example:

    >>> filter_banners("I0000 port.cc:153] oneDNN custom operations are on. ...\\nreal error\\n")
    'real error\\n'
    """
    lines = text.splitlines(keepends=True)
    no_driver = any(_NO_DRIVER.search(line) for line in lines)
    patterns = BANNER_PATTERNS + (CUDA_PATTERNS if no_driver else ())
    return "".join(line for line in lines if not any(p.search(line) for p in patterns))


@contextlib.contextmanager
def _filtered_stderr() -> Iterator[None]:
    try:
        fd = sys.__stderr__.fileno() if sys.__stderr__ is not None else 2
        saved = os.dup(fd)
    except (AttributeError, OSError, ValueError):  # no real descriptor 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        _flush()
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            _flush()
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            kept = filter_banners(capture.read().decode("utf-8", errors="replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def _flush() -> None:
    for stream in (sys.stderr, sys.__stderr__):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and Keras and initialise the devices without the start-up banners.

    Sets `TF_CPP_MIN_LOG_LEVEL=2` (unless already set) so that TensorFlow's later INFO and
    WARNING logs stay quiet too. A second call does nothing.

    Example:

    >>> import_tensorflow_quietly()  # doctest: +SKIP
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return
    with _filtered_stderr():
        import keras  # noqa: F401  (imports TensorFlow, the backend)
        import tensorflow as tf

        tf.config.list_physical_devices()  # cuInit happens here, inside the filter
