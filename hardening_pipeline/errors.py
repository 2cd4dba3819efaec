"""Exception types shared by every layer.

The CLI maps them to exit codes: a ``ConfigError`` is a user mistake (exit 2, one sentence, no
traceback); a ``CheckFailed`` means the system looked and found something red (exit 1).
"""


class HardeningError(Exception):
    """Base class for errors this project raises on purpose."""


class ConfigError(HardeningError):
    """Bad input or configuration: the message names the problem and the fix."""


class CheckFailed(HardeningError):
    """A check, canary, migration pre-flight or drill ran and found a problem."""
