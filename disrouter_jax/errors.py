"""Errors a user fixes, and how the command-line entry points report them: one line, exit 2.

A run meets these before it can do anything useful: a checkpoint that is neither a local directory
nor reachable on the Hub, a data set without files for a split, a data file that does not parse, a
tokenizer without a chat template, a config.json or safetensors file that does not match. Their
messages already name what and where; a traceback would only bury that line under library frames.
Anything else (a bug) still ends with its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import sys

EXIT_CODE = 2


class SetupError(Exception):
    """A run's input (checkpoint, data set, tokenizer, config field) is missing or unusable; the
    message names which one and where it was looked for."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types reported as one line (imported late: the model and task modules are
    heavy, and this module is imported by every entry point first)."""
    from disrouter_jax.models.config import ConfigError
    from disrouter_jax.models.hf_io import CheckpointError
    from disrouter_jax.models.safetensors_io import SafetensorsError
    from disrouter_jax.storage import StorageError
    from disrouter_jax.tasks.example import DataFileError

    return (SetupError, ConfigError, CheckpointError, SafetensorsError, DataFileError, StorageError, FileNotFoundError,
            NotADirectoryError, IsADirectoryError, PermissionError)


def one_line(err: BaseException) -> str:
    """``err``'s message on one line (Hub and OS errors can span several)."""
    return " ".join(str(err).split()) or type(err).__name__


@contextlib.contextmanager
def reported_as_one_line():
    """Around a CLI's work: a user error prints ``error: <message>`` on stderr and exits 2."""
    try:
        yield
    except user_errors() as err:
        logging.getLogger("disrouter_jax").debug("stopped by a user error", exc_info=True)
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CODE) from None
