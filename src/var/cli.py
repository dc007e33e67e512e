"""The ``var`` command line. Each subcommand lives in ``var.cmd.<name>`` with ``register(subparsers)``."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .training.common import TrainingStopped

# Subcommand modules, in the order ``var --help`` lists them.
COMMANDS = ["sample", "edit", "data", "train", "evaluate", "bench", "serve"]


class Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (the subcommands' parsers are of this class too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="var", description="Visual AutoRegressive modeling: generate, edit, "
                    "train and evaluate next-scale prediction models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks with errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"var.cmd.{name}").register(sub)
    return parser


def error_text(e: Exception) -> str:
    """The one line a user error prints: an OSError of the system as ``FILE: reason`` (``[Errno 13]`` and the
    file's quotes dropped), any other error's own message."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        return f"{e.filename}: {e.strerror}" + (f" ({e.filename2})" if e.filename2 is not None else "")
    return str(e)


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. A user error (a bad value, or a file that cannot be read or written) is one line and
    exit status 2, a training run stopped early (NaN loss, failed checkpoint write, SIGINT/SIGTERM) one line
    and its own status; tracebacks only with ``-v``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    log = logging.getLogger("var")
    try:
        return int(args.run(args) or 0)
    except (ValueError, OSError) as e:  # OSError: a file that cannot be read or written (permissions, a full disk)
        log.error("error: %s", error_text(e), exc_info=args.verbose)
        return 2
    except TrainingStopped as e:
        log.error("%s", e, exc_info=args.verbose)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
