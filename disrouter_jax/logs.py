"""Logging set-up shared by the command-line entry points."""

import logging


def configure_logging(level: int = logging.INFO) -> None:
    logging.getLogger().setLevel(level)
    # Orbax and XLA report every checkpoint step through absl's logger at INFO: keep warnings.
    logging.getLogger("absl").setLevel(logging.WARNING)
