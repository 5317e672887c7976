"""Exceptions that carry a user-facing message naming the file or key at fault."""


class PcamError(Exception):
    """Base class: the CLI prints the message and exits non-zero, without a traceback."""


class DataError(PcamError):
    """A dataset file is missing, corrupt or inconsistent; the message names the file."""


class ConfigError(PcamError):
    """A configuration value is invalid; the message names the key."""
