"""Fixtures of the export tests; the helpers live in `export_helpers.py`."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
