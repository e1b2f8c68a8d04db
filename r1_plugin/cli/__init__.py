"""The `r1-plugin` command: one subcommand per module in this package (steer, sinks, features, ...).

Each subcommand module defines `add_parser(subparsers) -> argparse.ArgumentParser` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS: tuple[str, ...] = ("models", "steer", "sinks", "features", "saes", "experiment", "doctor")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser. With `command`, only that subcommand's full parser is built (the others are bare
    names), so a command that needs no model imports no model code: `add_parser` may import what its options
    need (e.g. the sinks defaults import torch)."""
    from r1_plugin.cli._errors import CLIParser  # usage errors on one line, exit code 2

    parser = CLIParser(prog="r1-plugin", description="DeepSeek-R1 interpretability tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        if command is not None and name != command:
            sub.add_parser(name)  # only its name: argv chose another command
            continue
        sub_parser = module.add_parser(sub)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `r1-plugin`; returns the process exit code (2, with one line on stderr, for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0), or a usage error already printed on one line (2)
        return exc.code if isinstance(exc.code, int) else 2
    from r1_plugin.cli._errors import input_error_message, one_line
    from r1_plugin.errors import R1PluginError

    try:
        return int(args._run(args) or 0)
    except R1PluginError as exc:
        print(f"r1-plugin {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # an unreadable file the user gave is bad input too; anything else is a bug
        message = input_error_message(exc, args)
        if message is None:
            raise
        print(f"r1-plugin {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
