"""argparse `type=` functions built from r1_plugin.values: a flag is checked by the same code as the Python argument.

    parser.add_argument("--top-k", type=count())                      # an integer >= 1
    parser.add_argument("--seed", type=count(at_least=0))             # an integer >= 0
    parser.add_argument("--strength", type=finite_float)              # NaN and inf refused
    parser.add_argument("--epsilon", type=checked(float, check_epsilon))   # a library's own checker
    parser.add_argument("--out", type=out_dir)                        # a folder that can be created or written

A refused value is an `argparse.ArgumentTypeError`, so argparse prints it as a one-line usage error, exit code 2,
before anything slow (a model load) runs.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from r1_plugin.errors import R1PluginError
from r1_plugin.values import InvalidValueError, finite, in_range, integer, positive


class OutputPathError(R1PluginError, ValueError):
    """An output path that cannot be written (an existing file where a folder is wanted, a read-only parent, ...)."""


def _parse(parse: Callable[[str], Any], text: str) -> Any:
    """`parse(text)`, with a readable ArgumentTypeError when the text is not a number of that kind."""
    try:
        return parse(text)
    except (ValueError, TypeError):
        kind = "an integer" if parse is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None


def checked(parse: Callable[[str], Any], check: Callable[[Any], Any]) -> Callable[[str], Any]:
    """argparse type: `check(parse(text))`, its InvalidValueError shown as the flag's usage error."""

    def convert(text: str) -> Any:
        value = _parse(parse, text)
        try:
            return check(value)
        except InvalidValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(check, "__name__", "value")
    return convert


def count(at_least: int = 1, at_most: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer in [at_least, at_most] (values.integer)."""
    return checked(int, lambda v: integer("value", v, at_least=at_least, at_most=at_most))


def finite_float(text: str) -> float:
    """argparse type: a finite number (values.finite; NaN and +-inf are refused)."""
    return checked(float, lambda v: finite("value", v))(text)


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (values.positive with allow_zero)."""
    return checked(float, lambda v: positive("value", v, allow_zero=True))(text)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (values.positive)."""
    return checked(float, lambda v: positive("value", v))(text)


def fraction(text: str) -> float:
    """argparse type: a finite number in [0, 1] (values.in_range)."""
    return checked(float, lambda v: in_range("value", v, 0.0, 1.0))(text)


def finite_floats(text: str) -> list[float]:
    """argparse type: comma-separated finite numbers, at least one (e.g. strengths 0,2,4,8)."""
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("give at least one number, e.g. 0,2,4,8")
    return [finite_float(part) for part in parts]


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_out_dir(path: str | Path) -> Path:
    """`path` as a folder that exists or can be made, and can be written; else OutputPathError (nothing created)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{path} exists and is not a folder: give a folder for the output")
    _check_folder(path, path)
    return path


def check_out_file(path: str | Path) -> Path:
    """`path` as a file that can be written (not a folder; its folder exists or can be made); else OutputPathError."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder: give a file name for the output")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise OutputPathError(f"cannot write {path}: permission denied")
        return path
    _check_folder(path.parent, path)
    return path


def _check_folder(folder: Path, target: Path) -> None:
    """Raise OutputPathError unless `folder` exists as a writable folder or can be made (for writing `target`)."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise OutputPathError(f"cannot create {target}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        read_only = hasattr(os, "statvfs") and bool(os.statvfs(base).f_flag & getattr(os, "ST_RDONLY", 1))
        reason = "Read-only file system" if read_only else "Permission denied"
        raise OutputPathError(f"cannot write {target}: {base} is not writable ({reason}; no permission to write "
                              "there: choose a folder you can write to)")


def make_out_dir(path: Path) -> Path:
    """Create the output folder now (before a model loads), with a one-line error when the system refuses."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create the output folder {path}: {exc.strerror or exc}") from None
    return path


def _as_type(check: Callable[[Any], Path]) -> Callable[[str], Path]:
    """argparse type from an OutputPathError-raising path check."""

    def convert(text: str) -> Path:
        try:
            return check(text)
        except OutputPathError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = "path"
    return convert


out_dir = _as_type(check_out_dir)
out_file = _as_type(check_out_file)


def in_file(text: str) -> Path:
    """argparse type: a file that exists (not a folder)."""
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{path} does not exist")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder, not a file")
    return path


def gate(text: str) -> Any:
    """argparse type: a steering gate spelling (`r1_plugin.steering.as_gate`), e.g. prefix, always, regex:Wait."""
    import re

    from r1_plugin.steering import as_gate

    try:
        return as_gate(text)
    except re.error as exc:  # regex:<pattern> that does not compile
        raise argparse.ArgumentTypeError(f"{text!r}: the regular expression does not compile ({exc})") from None
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
