"""The exception types of mtcore's public interface."""


class MTCoreError(ValueError):
    """Bad input to mtcore: a config, batch, checkpoint or corpus that cannot be used.

    The message names the offending value and what was expected. It subclasses ``ValueError`` so
    callers that already catch ``ValueError`` keep working.
    """


class BackendUnavailable(ImportError):
    """A framework backend was asked for but its framework is not installed."""
