"""User-facing errors: each one is printed as a single line by the CLI, never as a traceback."""


class OrchardError(Exception):
    """A mistake the user can fix; the message names the thing and the fix."""


class ConfigError(OrchardError):
    """An option or combination of options is invalid."""


class WeightsError(OrchardError):
    """Model weights are missing or are not what orchard expects."""


class AccountingError(OrchardError):
    """Listed images do not equal ok + error rows: the run must not look complete."""


class ResourceError(OrchardError):
    """The run needs more memory (or other resources) than a setting allows; the message names the setting."""
