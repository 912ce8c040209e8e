"""The one error type for mistakes a user can fix.

The CLI prints ``str(error)`` as a single line on stderr and exits with
``error.exit_code``; a traceback is shown only with ``--debug``. Library code raises
these wherever the cause is the user's input (a path, a name, a file's content), and
lets genuine bugs surface as ordinary exceptions.
"""

from __future__ import annotations


class RcdmError(Exception):
    """Something went wrong while doing valid work: a corrupt file, a failed download."""

    exit_code = 1


class UsageError(RcdmError):
    """The request itself is malformed or contradictory: a bad value, an unknown name."""

    exit_code = 2


EXIT_OK = 0
EXIT_RUNTIME = RcdmError.exit_code
EXIT_USAGE = UsageError.exit_code
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Interrupted(RcdmError):
    """A run stopped by a signal (Ctrl-C, SIGTERM) before it finished: what it had
    finished is kept, and nothing claims to be complete."""

    exit_code = EXIT_INTERRUPTED


class Terminated(Interrupted):
    """Stopped by SIGTERM, what `timeout`, `kill` and batch schedulers send: handled as
    Ctrl-C is, with the shell's code for it."""

    exit_code = EXIT_TERMINATED
