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


class InputError(OrchardError):
    """The input as a whole cannot be listed or read (e.g. the credentials may not read its prefix)."""


ACCESS_DENIED_MARKS = ("AccessDenied", "ACCESS_DENIED", "Status Code: 403", "HTTP status 403", "403 Forbidden")


def access_denied(error: BaseException) -> bool:
    """True when a storage error (pyarrow's OSError, or a Spark/Hadoop one: AccessDeniedException) says 403."""
    return isinstance(error, PermissionError) or any(mark in str(error) for mark in ACCESS_DENIED_MARKS)


class StorageError(OrchardError):
    """The storage kept failing (throttling, resets, timeouts) after every retry; a rerun resumes the run."""


TRANSIENT_MARK = "orchard: storage kept failing:"  # found in a failed Spark job's text (spark.explain_job_failure)


class TransientReadError(OSError):
    """A read that failed for a passing reason (503 SlowDown, a reset connection, a timeout) on every attempt.

    Never an image error: raised in a Python worker it fails the Spark task, which Spark retries
    (spark.task.maxFailures); when every task attempt fails, the run stops with one line (StorageError).
    """

    def __init__(self, message: str, uri: str = "", attempts: int = 0):
        super().__init__(message)
        self.uri, self.attempts = uri, attempts

    def __reduce__(self):  # picklable with its fields (OSError's default would drop them)
        return type(self), (str(self), self.uri, self.attempts)
