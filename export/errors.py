"""The one exception type the export tools raise for a bad model, input or a failed check."""

from __future__ import annotations

__all__ = ["ExportError"]


class ExportError(RuntimeError):
    """An export could not be produced, or a produced artefact failed its verification.

    Nothing is left behind when it is raised by `export.export_model` (the version folder is
    built under a temporary name and only renamed into place after every check passed).

    Example:

    >>> try:
    ...     raise ExportError("model has no keras_nrnn cell")
    ... except ExportError as err:
    ...     print(err)
    model has no keras_nrnn cell
    """
