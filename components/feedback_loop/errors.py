"""Errors a user can act on. Each renders as one line: what is wrong and what to do."""


class FeedbackLoopError(Exception):
    """Base of every error the CLI turns into one line and a non-zero exit."""


class SettingsError(FeedbackLoopError):
    """A setting has a value the loop cannot use."""


class DatabaseUnreachable(FeedbackLoopError):
    """The feedback database did not answer (after retries)."""


class FeedbackSchemaError(FeedbackLoopError):
    """A table or column the loop needs is missing."""


class DataError(FeedbackLoopError):
    """A dataset cannot be used as given (empty, no common column, unknown format)."""


class ModelNotFound(FeedbackLoopError):
    """A model version the loop needs is not in the model store."""


class DeploymentError(FeedbackLoopError):
    """The serving target refused or cannot take the rollout."""


class DatabaseUrlInvalid(SettingsError):
    """DATABASE_URL cannot be parsed (named by the part that is wrong, never by its value)."""


class DatabaseAuthFailed(FeedbackLoopError):
    """The feedback database refused the login: not retried, no retry would change it."""


class DatabaseLost(FeedbackLoopError):
    """The feedback database stopped answering, or went away, in the middle of the work."""
