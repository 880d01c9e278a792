"""Logging set-up for the scripts: everything goes to the rule's log file."""

from __future__ import annotations

import logging
import sys


def to_file(path: str | None) -> None:
    """Send log records, warnings and an uncaught exception's traceback to the rule's log file.

    Snakemake prints a failed job's log (show-failed-logs) but not a script's stderr, so without the
    hook a crash would leave a log that ends mid-way with no reason.
    """
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        filename=path,
        force=True,
    )
    logging.captureWarnings(True)

    def log_uncaught(kind, value, tb):
        logging.getLogger("quantflow").critical("%s: %s", kind.__name__, value, exc_info=(kind, value, tb))
        sys.__excepthook__(kind, value, tb)

    sys.excepthook = log_uncaught
