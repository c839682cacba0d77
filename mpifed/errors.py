"""The one exception users see: a one-line message that names the bad value and the valid range."""


class MpifedError(Exception):
    """A user-facing error; ``str(err)`` is a single line, printed as ``mpifed: error: <line>``."""


class DataError(MpifedError):
    """A dataset file is missing, malformed or fails its checksum."""


class ConfigError(MpifedError):
    """A configuration value is unknown or out of its valid range."""
