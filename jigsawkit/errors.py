"""Errors that reach the user as one clear line and exit code 2 (never a traceback)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a file, a key, an argument. The CLI prints it and exits 2."""

    exit_code = 2


class ConfigError(UserError):
    """One or more problems in an experiment or sweep file.

    ``problems`` holds one formatted line per problem (``file:line:col: key: message``).
    """

    def __init__(self, problems: list[str] | str):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class UnknownComponentError(UserError):
    """A component name that no registry knows."""


class DuplicateComponentError(UserError):
    """Two components registered under the same name in one registry."""


class PluginLoadError(UserError):
    """A plugin file or package failed to import, or a plugin folder does not exist."""


class PluginError(UserError):
    """Code of a plugin (its factory, its ``check()``, its schema) failed.

    The message names the plugin file, the component and the exception in one line; the
    original exception is kept as ``__cause__`` so ``--traceback`` can show it.
    """


class DataMissingError(UserError):
    """A dataset is not on disk and cannot be fetched; the message says what to do."""


class CheckpointError(UserError):
    """A checkpoint or exported feature extractor that cannot be read safely."""


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def one_line(error: BaseException, first_line: bool = False, typed: bool = True) -> str:
    """An exception as one line for a message: ``Type: message``, the message's white space
    folded (only its first non-blank line with ``first_line``; no ``Type: `` without
    ``typed``, for a ``UserError`` whose message is already written for the user)."""
    text = str(error)
    if first_line:
        text = next((line for line in text.splitlines() if line.strip()), "")
    text = " ".join(text.split())
    if not typed:
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
