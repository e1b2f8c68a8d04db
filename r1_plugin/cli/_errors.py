"""How `r1-plugin` reports bad input: one line on stderr and exit code 2, never a traceback.

Usage errors come from `CLIParser.error`; errors r1_plugin raises on purpose (`R1PluginError`: a model that
does not fit, an unreadable database, an unknown W&B mode, ...) are printed by `main` with `one_line`, and so are
the errors of files the user gave (`input_error_message`). Anything else is a bug: one line too, saying so and
how to see its traceback (`R1_PLUGIN_DEBUG=1`).
"""

from __future__ import annotations

import argparse
import errno
import sys
from typing import NoReturn

from r1_plugin.errors import R1PluginError

USAGE_EXIT = 2
INTERRUPTED_EXIT = 130  # the shell's code for Ctrl-C


class MissingSubcommandError(R1PluginError, ImportError):
    """A module of one of r1-plugin's commands is missing from the installation."""


class CLIParser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (and a pointer to --help) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        """Print `<prog>: error: <message> (see <prog> --help)` on stderr and exit with code 2."""
        self.exit(USAGE_EXIT, f"{self.prog}: error: {one_line(message)} (see `{self.prog} --help`)\n")


def one_line(message: object) -> str:
    """The message with its lines joined by '; ' (a multi-line explanation still prints as one line)."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


_DUCKDB_FILE_ERRORS = ("IOException", "SerializationException", "PermissionException", "InvalidInputException",
                       "ConversionException")


def report_failure(prog: str, exc: BaseException, args: argparse.Namespace | None = None) -> int:
    """Print `<prog>: error: <one line>` for `exc` on stderr; return the exit code (2)."""
    if isinstance(exc, R1PluginError):
        message = one_line(exc)
    else:
        message = input_error_message(exc, args)
        if message is None:
            detail = one_line(exc) or "(no message)"
            message = (f"internal error, {type(exc).__name__}: {detail} (a bug in r1_plugin: please report it; "
                       "R1_PLUGIN_DEBUG=1 shows the traceback)")
    print(f"{prog}: error: {message}", file=sys.stderr)
    return USAGE_EXIT


def _database_message(kind: str, exc: BaseException, hint: str, given: list[str] | None = None) -> str:
    """One line for a database error that is not a lock, a full disk or a path (`_not_damaged_hint`): a value of
    the wrong type, or a damaged file (`hint`)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    if type(exc).__name__ == "ConversionException":
        files = ", ".join(given or []) or f"the {kind} database"
        return f"cannot read {files}: a value has the wrong type ({first}); feature ids must be integers"
    return f"cannot read the {kind} database: {one_line(exc)}{hint}"


def input_error_message(exc: BaseException, args: argparse.Namespace | None = None) -> str | None:
    """One line for an error that comes from a file the user gave rather than from r1_plugin; None otherwise.

    Such errors are a database file that cannot be read (damaged, truncated, locked or not readable: sqlite3's
    DatabaseError, DuckDB's I/O and serialization errors), a path that is missing, a folder or not readable,
    and a model or file that is not in the HF cache while the hub cannot be reached.
    """
    import sqlite3

    from r1_plugin.errors import is_missing_file_error

    if is_missing_file_error(exc):  # a model or file neither in the HF cache nor downloadable now
        return one_line(exc)
    name = type(exc).__name__
    given = [str(p) for p in (getattr(args, f, None) for f in ("labels", "activations", "db_dir")) if p]
    hint = f" (reading {', '.join(given)}: is the file damaged or incomplete? fetch it again)" if given else (
        " (is the file damaged or incomplete? fetch it again)"
    )
    not_damaged = _not_damaged_hint(str(exc))  # a lock, a full disk or no write access: the file is fine
    if not_damaged and (isinstance(exc, sqlite3.DatabaseError) or type(exc).__module__.lstrip("_").startswith("duckdb")):
        return f"{one_line(exc)} ({not_damaged})"
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, (sqlite3.ProgrammingError, sqlite3.InterfaceError)
    ):
        return _database_message("SQLite", exc, hint, given)
    if type(exc).__module__.lstrip("_").startswith("duckdb") and name in _DUCKDB_FILE_ERRORS:
        return _database_message("DuckDB", exc, hint, given)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = getattr(exc, "filename", None)
        return f"no space left on the device{f' writing {where}' if where else ''}: free some space and run again"
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
                        FileExistsError)) and getattr(exc, "filename", None):
        return f"{exc.strerror or name}: {exc.filename}"
    return None


def _not_damaged_hint(message: str) -> str | None:
    """What to do when a database error is a lock conflict, a full disk or missing write access, not damage."""
    if "Conflicting lock" in message or "Could not set lock" in message or "database is locked" in message:
        return "another process has the database open: close it or wait for it to finish, then rerun"
    if "No space left on device" in message:
        return "no space left: free some space there or write elsewhere, then rerun"
    if any(t in message for t in ("Permission denied", "Read-only file system", "attempt to write a readonly")):
        return "no permission to write there: choose a folder you can write to"
    if any(t in message for t in ("Not a directory", "Is a directory", "No such file or directory")):
        return "the path cannot be opened as a database file: check it"
    return None


def check_tracking_args(args: argparse.Namespace) -> None:
    """Fail now, before a model is loaded, on a W&B mode that cannot work (`--wandb-mode` or $WANDB_MODE)."""
    from r1_plugin.tracking import resolve_mode

    if not getattr(args, "no_wandb", False):
        resolve_mode(getattr(args, "wandb_mode", None))
