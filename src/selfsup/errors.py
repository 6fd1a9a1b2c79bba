"""The errors a user sees as one line: the lowest layer, imported by every other one.

The CLI turns each of these into one stderr line and exit code 2 (a user error, not a bug). They live here, not
in the modules that raise them most, so that a lower layer (``augment/``, ``components/``) can raise a
:class:`ConfigError` without importing the configuration schema.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration key or value; the message names the key."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read safely; the message names the file."""


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (missing, not writable, in use by another run); names it."""
