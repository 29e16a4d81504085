"""Command line: ``medlens plan|train|evaluate|predict|bundle|export|serve|models``.

Thin on purpose: each command (:mod:`medlens.cli.commands`) reads its flags (:mod:`medlens.cli.parsers`) and
calls one API function. Bad input (``MedlensError``) prints ``error: <message>`` on stderr and exits with
status 2; ``--verbose`` shows the traceback instead. ``predict`` goes on past unreadable images (every
readable one is predicted and written), then names each on stderr the same way (``error: cannot read
<file>: <reason>``) and exits with status 1.
"""

from __future__ import annotations

import logging
import os
import sys

from medlens.cli.commands import EXIT_BAD_INPUT
from medlens.cli.parsers import build_parser
from medlens.errors import MedlensError

__all__ = ["build_parser", "main"]


def _setup_logging(verbose: bool) -> None:
    main_rank = os.environ.get("RANK", "0") == "0"
    level = logging.DEBUG if verbose else (logging.INFO if main_rank else logging.WARNING)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    if not verbose:
        for noisy in ("PIL", "matplotlib", "urllib3", "httpx", "timm"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medlens`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (MedlensError, FileNotFoundError) as e:
        if args.verbose:
            raise
        sys.stderr.write(f"error: {e}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
