"""The `r1-plugin` command: one subcommand per module in this package (steer, sinks, features, ...).

Each subcommand module defines `add_parser(subparsers) -> argparse.ArgumentParser` and `run(args) -> int`.

Every failure is one line on stderr and exit code 2, never a traceback; `R1_PLUGIN_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

SUBCOMMANDS: tuple[str, ...] = ("models", "steer", "sinks", "features", "saes", "experiment", "doctor")
DEBUG_ENV = "R1_PLUGIN_DEBUG"  # set to 1: failures raise with their traceback instead of one line


def debug() -> bool:
    """Whether $R1_PLUGIN_DEBUG asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def command_name(args: argparse.Namespace) -> str:
    """`r1-plugin <command> [<action>]` as the user typed it, for error lines."""
    action = next((getattr(args, dest) for dest in ("features_command", "experiment", "models_action", "saes_command")
                   if isinstance(getattr(args, dest, None), str)), None)
    return " ".join(part for part in ("r1-plugin", args.command, action) if part)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser. With `command`, only that subcommand's full parser is built (the others are bare
    names), so a command that needs no model imports no model code: `add_parser` may import what its options
    need (e.g. the sinks defaults import torch)."""
    from r1_plugin.cli._errors import CLIParser, MissingSubcommandError  # usage errors: one line, exit 2

    parser = CLIParser(prog="r1-plugin", description="DeepSeek-R1 interpretability tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise  # a dependency it imports is missing: its own error says which
            raise MissingSubcommandError(
                f"the `{name}` command's module {exc.name} is missing: this r1_plugin installation is incomplete; "
                "reinstall it (pip install --force-reinstall r1_plugin)"
            ) from exc
        if command is not None and name != command:
            sub.add_parser(name)  # only its name: argv chose another command
            continue
        sub_parser = module.add_parser(sub)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `r1-plugin`; returns the process exit code (2, with one line on stderr, for any failure)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    from r1_plugin.cli._errors import report_failure

    try:
        parser = build_parser(command if command in SUBCOMMANDS else None)
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0), or a usage error already printed on one line (2)
        return exc.code if isinstance(exc.code, int) else 2
    except Exception as exc:
        if debug():
            raise
        return report_failure("r1-plugin", exc)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        from r1_plugin.cli._errors import INTERRUPTED_EXIT

        print(f"{command_name(args)}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception as exc:
        if debug():
            raise
        return report_failure(command_name(args), exc, args)


if __name__ == "__main__":
    sys.exit(main())
