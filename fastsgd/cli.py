"""The ``fastsgd`` command: ``train`` a digit classifier (or ``--resume`` one), ``predict``
with a saved model, ``interpret`` its mistakes, ``lr-find``, ``info`` on the backends,
``bench``.  The parser is ``fastsgd.commands.parser``; each command runs in a module of
``fastsgd.commands``.

Bad arguments and bad files end with one line on stderr, ``fastsgd COMMAND: error: WHY``
(``fastsgd: error: WHY`` before a command is known), and exit code 2.
"""
from __future__ import annotations

import sys

from .commands.options import EXIT_USAGE, UsageError, one_line
from .commands.parser import build_parser

__all__ = ["main", "build_parser", "UsageError", "EXIT_USAGE"]


def main(argv=None) -> int:
    """Entry point of the ``fastsgd`` command; returns the exit code."""
    prog = "fastsgd"
    try:
        args, extra = build_parser().parse_known_args(argv)
        prog = f"fastsgd {args.command}"
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
        return args.run(args) or 0
    except UsageError as exc:
        print(f"{exc.prog or prog}: error: {one_line(exc)}", file=sys.stderr)
    except (ValueError, TypeError, OSError, RuntimeError, ArithmeticError) as exc:
        # ArithmeticError: TrainingDiverged, a FloatingPointError
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
    except MemoryError as exc:
        print(f"{prog}: error: out of memory{f' ({one_line(exc)})' if str(exc) else ''}",
              file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
