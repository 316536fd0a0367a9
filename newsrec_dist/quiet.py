"""Console noise of the libraries, off unless ``newsrec --verbose``: what a user reads is our own summary.

Lightning's info lines and tips, torch's pytree deprecation warning and Ray's worker log lines are for debugging a
library, not for a run's console. Errors and our own warnings are untouched.
"""

from __future__ import annotations

import logging
import os
import warnings

QUIET_ENV = "NEWSREC_QUIET"  # inherited by Ray workers and submitted jobs


def quiet_libraries() -> None:
    os.environ[QUIET_ENV] = "1"
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*pytree.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")


def is_quiet() -> bool:
    return os.environ.get(QUIET_ENV) == "1"
