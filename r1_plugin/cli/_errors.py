"""How `r1-plugin` reports bad input: one line on stderr and exit code 2, never a traceback.

Usage errors come from `CLIParser.error`; errors r1_plugin raises on purpose (`R1PluginError`: a model that
does not fit, an unreadable database, an unknown W&B mode, ...) are printed by `main` with `one_line`.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

USAGE_EXIT = 2


class CLIParser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (and a pointer to --help) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        """Print `<prog>: error: <message> (see <prog> --help)` on stderr and exit with code 2."""
        self.exit(USAGE_EXIT, f"{self.prog}: error: {one_line(message)} (see `{self.prog} --help`)\n")


def one_line(message: object) -> str:
    """The message with its lines joined by '; ' (a multi-line explanation still prints as one line)."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
