"""The ``var`` command line. Each subcommand lives in ``var.cmd.<name>`` with ``register(subparsers)``."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Subcommand modules, in the order ``var --help`` lists them.
COMMANDS = ["sample", "edit", "train", "evaluate", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="var", description="Visual AutoRegressive modeling: generate, edit, "
                                     "train and evaluate next-scale prediction models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"var.cmd.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        logging.getLogger("var").error("error: %s", e)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
