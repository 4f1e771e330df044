"""What the commands print around the libraries': one place that quiets Lightning for `python -m extract` and
`python -m heads` (standard library only, so both stages share it without importing each other)."""

from __future__ import annotations

import logging
import warnings

LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning", "lightning_fabric", "lightning.pytorch")


def quiet_lightning(*warning_patterns: str) -> None:
    """Lightning's info banners ("GPU available: ...") off, and the warnings whose message matches one of the
    regular expressions ignored, for the rest of the process (the commands call it once at their start)."""
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in warning_patterns:
        warnings.filterwarnings("ignore", message=pattern)
