"""Errors a user can cause and fix. The CLI prints these as one message, no traceback."""


class MddError(Exception):
    """A problem with the user's input or environment, stated so they can fix it.

    ``exit_code`` follows the convention of the command line: 2 for a bad
    configuration or usage, 1 for anything that failed while running.
    """

    exit_code = 1


class ConfigError(MddError):
    exit_code = 2


class DataError(MddError):
    exit_code = 1


class StageError(MddError):
    """A stage could not go on (for example a NaN loss); what was logged stays logged."""

    exit_code = 1


class Pruned(MddError):
    """A sweep's pruner stopped this run early: not a failure, and not reported as one."""

    exit_code = 0
