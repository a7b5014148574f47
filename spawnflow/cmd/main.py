"""The ``spawnflow`` command (cliff): spawn, history, event, db.

Errors an operator can act on (SpawnflowError: unknown build, foreign or newer
database, bad spec, ...; database connection failures; bad config files) are
printed as one line on stderr with exit status 1; ``--debug`` shows the
traceback.
"""

from __future__ import annotations

import argparse
import functools
import logging
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import sqlalchemy as sa
from cliff.app import App
from cliff.command import Command
from cliff.commandmanager import CommandManager
from oslo_config import cfg

from spawnflow.cmd import logs
from spawnflow.cmd.render.text import safe
from spawnflow.exceptions import ConfigError, PersistenceError, SpawnflowError
from spawnflow.history import mask_url

# Anything shaped like scheme://...: a database or image URL inside an error message.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _mask_urls(text: str) -> str:
    """``text`` with the password, query and fragment of every URL in it masked.

    The last guard before stderr: whatever library wrote the message (SQLAlchemy,
    a DBAPI driver, oslo.config), no database password or URL token is shown.
    """
    return _URL.sub(lambda found: mask_url(found.group()), text)


def _one_line(text: str) -> str:
    # Escaped too (safe): messages quote stored names and errors, which must not
    # drive the operator's terminal.
    return safe(_mask_urls(" ".join(str(text).split())))


def _database_error(exc: sa.exc.SQLAlchemyError) -> PersistenceError:
    orig = getattr(exc, "orig", None) or exc
    lines = [line for line in str(orig).splitlines() if line.strip()]
    return PersistenceError(
        f"database error: {safe(_mask_urls(lines[0])) if lines else type(orig).__name__}"
    )


def _flat(exc: SpawnflowError) -> SpawnflowError | None:
    """``exc`` as one line of escaped text, of its own type where it can be; None if it
    already is one."""
    message = _one_line(str(exc))
    if message == str(exc):
        return None
    try:
        return type(exc)(message)
    except TypeError:
        return SpawnflowError(message)


TakeAction = Callable[[argparse.Namespace], Any]


def _guarded(take_action: TakeAction) -> TakeAction:
    """Turn the failures operators cause into one-line SpawnflowErrors."""

    @functools.wraps(take_action)
    def run(parsed_args: argparse.Namespace) -> Any:
        try:
            return take_action(parsed_args)
        except SpawnflowError as exc:
            flat = _flat(exc)
            if flat is None:
                raise
            raise flat from exc
        except sa.exc.SQLAlchemyError as exc:
            raise _database_error(exc) from exc
        except cfg.Error as exc:
            raise ConfigError(_one_line(str(exc))) from exc
        except Exception as exc:
            # Even an unexpected error is printed as one line of escaped text.
            message = _one_line(str(exc))
            if message == str(exc):
                raise
            raise SpawnflowError(f"{type(exc).__name__}: {message}") from exc

    return run


GetParser = Callable[[str], argparse.ArgumentParser]


def _one_line_usage_errors(get_parser: GetParser) -> GetParser:
    """A bad argument is refused in one line, like every other error (argparse would
    print the whole usage first); ``--help`` still shows it."""

    @functools.wraps(get_parser)
    def make(prog_name: str) -> argparse.ArgumentParser:
        parser = get_parser(prog_name)

        def error(message: str) -> NoReturn:
            parser.exit(2, f"{prog_name}: {_one_line(message)} (see {prog_name} --help)\n")

        # argparse has no hook for this but its documented error() method.
        parser.error = error  # type: ignore[method-assign]
        return parser

    return make


class SpawnflowApp(App):
    """The ``spawnflow`` application: its commands are the ``spawnflow.cli`` entry points."""

    VERSION = "0.1.0"

    def __init__(self) -> None:
        super().__init__(
            description="Durable, revertible VM spawns on a libvirt host.",
            version=self.VERSION,
            command_manager=CommandManager("spawnflow.cli"),
            deferred_help=True,
        )
        self._conf: cfg.ConfigOpts | None = None
        self._console: logging.Handler | None = None

    def build_option_parser(
        self,
        description: str | None,
        version: str | None,
        argparse_kwargs: dict[str, Any] | None = None,
    ) -> argparse.ArgumentParser:
        parser = super().build_option_parser(description, version, argparse_kwargs)
        parser.add_argument(
            "--config-file",
            action="append",
            default=[],
            metavar="PATH",
            help="oslo.config file (repeatable)",
        )
        return parser

    def configure_logging(self) -> None:
        """cliff's terminal handler (``-v``/``-q``) and ``--log-file``, with each build's
        id and step and escaped output; oslo.log joins once the configuration is read
        (see ``spawnflow.cmd.logs``)."""
        root = logging.getLogger("")
        before = list(root.handlers)
        super().configure_logging()
        # cliff adds its terminal handler last.
        self._console = root.handlers[-1] if root.handlers else None
        for handler in root.handlers:
            if handler in before:
                continue
            if handler is self._console:
                logs.prepare_console(handler)
            else:
                logs.prepare(handler)

    @property
    def conf(self) -> cfg.ConfigOpts:
        """The configuration, loaded once from --config-file; logging through oslo.log
        starts then, as its ``[DEFAULT]`` says."""
        if self._conf is None:
            argv: list[str] = []
            for path in self.options.config_file:
                argv += ["--config-file", path]
            self._conf = logs.load_conf(argv)
            logs.setup(self._conf, self._console, self.VERSION)
        return self._conf

    def prepare_to_run_command(self, cmd: Command) -> None:
        # Wrapped per instance, so every command gets the same guards whatever its base;
        # mypy does not let a bound method be replaced by a plain callable.
        take_action, get_parser = _guarded(cmd.take_action), _one_line_usage_errors(cmd.get_parser)
        cmd.take_action = take_action  # type: ignore[method-assign,assignment]
        cmd.get_parser = get_parser  # type: ignore[method-assign,assignment]

    def clean_up(self, cmd: Command, result: int, err: BaseException | None) -> None:
        # cliff has printed str(err) (one line, see _guarded) and returns 1;
        # the traceback is only for --debug.
        if isinstance(err, SpawnflowError):
            self.LOG.debug("command failed", exc_info=err)


def main(argv: list[str] | None = None) -> int:
    app = SpawnflowApp()
    return app.run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
