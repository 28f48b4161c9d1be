"""User-facing errors. Each message says what was received, what is allowed, and how to fix it."""


class HeadstartError(ValueError):
    """Base class for errors caused by user input (config, data, names, files)."""


class ConfigError(HeadstartError):
    """A config key or value is not valid."""


class DataError(HeadstartError):
    """Input data is missing, malformed or inconsistent."""


class BundleError(HeadstartError):
    """A saved model bundle or checkpoint cannot be used as asked."""


class TrainingError(HeadstartError):
    """Training cannot go on (a non-finite loss or gradient, a checkpoint that cannot be written); the run
    folder keeps its last good checkpoint and best bundle."""
