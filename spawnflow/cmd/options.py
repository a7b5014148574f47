"""Command-line options and argument types the commands share.

Each type turns a bad value into argparse's one-line refusal (``ArgumentTypeError``)
instead of a traceback.
"""

from __future__ import annotations

import argparse
import os

from oslo_config import cfg

from spawnflow import conf as sf_conf
from spawnflow.history import lifecycle, parse_time


def add_db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", metavar="URL", help="database URL or SQLite file (default: [database] connection)"
    )


def db_url(value: str | None, conf: cfg.ConfigOpts) -> str:
    """``--db`` (a URL, or a path taken as a SQLite file) or the configured database."""
    if not value:
        return sf_conf.database_url(conf)
    if "://" in value:
        return value
    # abspath, not Path.resolve: the URL names the path given (made absolute and
    # normalised), not where its links lead.
    return "sqlite:///" + os.path.abspath(value)  # noqa: PTH100 - see above


def time_arg(text: str) -> float:
    """``--since``/``--until``: ISO 8601 (UTC unless an offset is given) or an age (7d)."""
    try:
        moment = parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if moment is None:  # parse_time gives None only for None, never for a string
        raise argparse.ArgumentTypeError(f"not a time: {text!r}")
    return moment


def state_arg(text: str) -> list[str]:
    """``--state``: one or more build lifecycle states, ``a,b`` (any case)."""
    states = [s.strip().upper() for s in text.split(",") if s.strip()]
    unknown = [s for s in states if s not in lifecycle.STATES]
    if unknown or not states:
        raise argparse.ArgumentTypeError(
            f"unknown state {', '.join(unknown) or repr(text)}; one of "
            f"{', '.join(sorted(lifecycle.STATES))}"
        )
    return states


def days_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("days must be >= 0")
    return value


def positive_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value
