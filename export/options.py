"""Argument checks shared by the API and the command line (no TensorFlow import here, so that
`python -m export` reports a bad argument at once)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = [
    "DEFAULT_FORMATS",
    "FORMATS",
    "TIME_STEPS_CHOICES",
    "check_keras_archive",
    "check_time_steps",
    "check_version",
    "parse_formats",
]

FORMATS = ("savedmodel", "onnx", "tflite")
#: What `export_model` writes when `formats` is not given (TFLite on request).
DEFAULT_FORMATS = ("savedmodel", "onnx")

#: How a whole-sequence graph loops over time: `auto` (the measured default of each format),
#: `dynamic` (a loop over any length), `fixed` (unrolled for the model's length only),
#: `hybrid` (unrolled for the model's length, a loop for any other length).
TIME_STEPS_CHOICES = ("auto", "dynamic", "fixed", "hybrid")


def check_time_steps(argument: str, value: str) -> str:
    """`value` if it is one of `TIME_STEPS_CHOICES`, else a `ValueError` naming `argument`.

    Example:

    >>> check_time_steps("onnx_time_steps", "fixed")
    'fixed'
    """
    if value not in TIME_STEPS_CHOICES:
        raise ValueError(
            f"Argument `{argument}` must be one of {list(TIME_STEPS_CHOICES)}; received "
            f"{argument}={value!r}."
        )
    return value


def parse_formats(formats: str | Iterable[str]) -> list[str]:
    """Validate `formats` (names or a comma-separated string); returns them in canonical order.

    Example:

    >>> parse_formats("onnx,savedmodel")
    ['savedmodel', 'onnx']
    """
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    names = [str(f).strip().lower() for f in items if str(f).strip()]
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise ValueError(
            f"Argument `formats` must be a non-empty subset of {list(FORMATS)}; received "
            f"formats={formats!r}" + (f" (unknown: {unknown})." if unknown else ".")
        )
    return [f for f in FORMATS if f in names]


def check_version(version: Any) -> int:
    """`version` as an int >= 1, or a `ValueError` naming it.

    Example:

    >>> check_version(3)
    3
    """
    is_int = not isinstance(version, bool) and hasattr(version, "__index__")
    if not is_int or int(version) < 1:
        raise ValueError(
            "Argument `version` must be an integer >= 1 (TF Serving version folder); "
            f"received version={version!r}."
        )
    return int(version)


def check_keras_archive(path: str) -> str | None:
    """A one-line problem with the `.keras` file `path`, or None if it is a readable zip.

    A `.keras` model is a zip archive (config.json, model.weights.h5, metadata.json); a
    truncated download or another file renamed to `.keras` is not one.

    Example:

    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "m.keras"); _ = open(f, "wb").write(b"garbage")
    >>> "not a valid .keras archive" in check_keras_archive(f)
    True
    """
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
            if "config.json" in names:
                return None
            return f"Model file {path!r} is not a valid .keras archive (a zip without config.json)."
    except (OSError, zipfile.BadZipFile) as err:
        return f"Model file {path!r} is not a valid .keras archive ({err})."
    return (
        f"Model file {path!r} is not a valid .keras archive (not a zip file: truncated or "
        "corrupt?)."
    )
