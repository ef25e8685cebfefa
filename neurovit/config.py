"""Project-wide locations and environment settings, resolved in one place."""

import os
from pathlib import Path

# Everything the project writes goes under one gitignored folder.
OUTPUT_DIR = Path(os.environ.get("NEUROVIT_OUTPUT_DIR", "outputs")).resolve()

MODEL_NAME = os.environ.get("NEUROVIT_MODEL_NAME", "neurovit")

# Default artifact store: a local folder; an s3:// URI selects the MinIO / S3 back end.
DEFAULT_STORE = os.environ.get("NEUROVIT_STORE", str(OUTPUT_DIR / "store"))
