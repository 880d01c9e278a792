"""Logging set-up for the scripts: everything goes to the rule's log file."""

from __future__ import annotations

import logging


def to_file(path: str | None) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        filename=path,
        force=True,
    )
    logging.captureWarnings(True)
