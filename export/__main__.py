"""`python -m export MODEL_OR_RUN_DIR --out EXPORT_BASE ...` (see `export.cli`)."""

import sys

from export.cli import main

if __name__ == "__main__":
    sys.exit(main())
