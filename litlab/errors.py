"""User-facing errors: the CLI prints these as one line instead of a traceback."""


class LitlabError(Exception):
    """Base class of errors caused by user input (configs, arguments, data files)."""


class ConfigError(LitlabError, ValueError):
    """An argument has a value that is not allowed; the message names the argument and the value."""


class DataError(LitlabError, ValueError):
    """A data file, folder, shard or record is missing or unreadable; the message names it."""
