"""The errors a user fixes by changing the config, the command line or the data."""


class UserError(ValueError):
    """Input that cannot work; the message names the value and the fix."""

    label = "Error"


class ConfigError(UserError):
    """A config value or command-line flag that cannot work."""

    label = "Config error"


class TrainingError(UserError):
    """A run that cannot go on as configured (updates that stay non-finite)."""

    label = "Training stopped"


class DataError(UserError):
    """Data that cannot be read as the config says (missing directory, split or records)."""

    label = "Data error"
