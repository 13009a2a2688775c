"""User-facing errors (the CLI prints these as one line instead of a traceback) and the argument checks that
constructors use to raise them."""

from __future__ import annotations

from collections.abc import Sequence


class LitlabError(Exception):
    """Base class of errors caused by user input (configs, arguments, data files)."""


class ConfigError(LitlabError, ValueError):
    """An argument has a value that is not allowed; the message names the argument and the value."""


class DataError(LitlabError, ValueError):
    """A data file, folder, shard or record is missing or unreadable; the message names it."""


def check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} is not allowed: it must be an integer >= {minimum}")
    return value


def check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    """Raise ConfigError naming ``name`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed: choose one of {list(allowed)!r}")
