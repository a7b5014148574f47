"""Logging of the ``spawnflow`` command through oslo.log, with each build's id and step.

cliff sets up the terminal (stderr, ``-v``/``-q``); once the configuration is
read, oslo.log adds what ``[DEFAULT]`` asks for (``log_file``, ``use_journal``,
``use_syslog``, ``debug``, ``default_log_levels``, the format strings, ...). Three
things are ours:

- oslo.log's fallback handler, stdout, is dropped: stdout carries the command's
  output (tables, JSON exports), never log records; the terminal keeps cliff's
  stderr handler and its ``-v``/``-q`` level (with ``use_stderr = true``
  oslo.log's stderr handler takes its place, and its level).
- Every handler gets ``BuildFilter``: a record written by a build's thread
  carries ``build_id`` and ``step`` (``spawnflow.engine.log_context``). For
  oslo.log a build is the unit of work it calls a request, so such a record
  also gets ``request_id`` = the build id: oslo.log then formats it with
  ``logging_context_format_string``, whose default here names the build and
  step, and the journal handler stores it as the ``REQUEST_ID`` field
  (``journalctl REQUEST_ID=<build>``). The terminal shows ``[build step]``
  before the message.
- Every handler's output is escaped for terminals (``spawnflow.cmd.render``).

Nothing here logs option values: the configuration holds the database URL.
"""

from __future__ import annotations

import logging
import sys

from oslo_config import cfg
from oslo_log import log as oslo_logging

from spawnflow import conf as sf_conf
from spawnflow.cmd.render.text import safe
from spawnflow.engine.log_context import NONE, ContextFilter

PROJECT = "spawnflow"
_OURS = "_spawnflow_oslo_log"  # marks the handlers oslo.log made for us

# oslo.log's own default with its request part ("[global_request_id request_id
# user_identity]", empty here: spawnflow has no users) replaced by the build and step.
CONTEXT_FORMAT = (
    "%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(name)s "
    "[%(build_id)s %(step)s] %(instance)s%(message)s"
)


def set_defaults() -> None:
    """spawnflow's defaults for oslo.log's options.

    Also the ``oslo.config.opts.defaults`` hook of the ``spawnflow`` namespace, so
    that the sample configuration (``make genconfig``) shows them.
    """
    oslo_logging.set_defaults(logging_context_format_string=CONTEXT_FORMAT)


def load_conf(argv: list[str]) -> cfg.ConfigOpts:
    """``spawnflow.conf.load`` with oslo.log's options registered too (they must be
    registered before the command line is parsed)."""
    set_defaults()
    conf = cfg.ConfigOpts()
    sf_conf.register_opts(conf)
    oslo_logging.register_options(conf)
    conf(args=list(argv), project=PROJECT, default_config_files=[])
    return conf


class BuildFilter(ContextFilter):
    """``build_id`` and ``step`` on every record, and ``request_id`` on a build's (see above)."""

    def filter(self, record: logging.LogRecord) -> bool:
        super().filter(record)
        build_id = getattr(record, "build_id", NONE)
        if build_id != NONE and not getattr(record, "request_id", None):
            record.request_id = build_id
        return True


class TerminalSafeFormatter(logging.Formatter):
    """A handler's own formatter, its output escaped: a log line may quote what a
    server or a stored record said (an HTTP reason, an instance name), and a
    terminal reading the log must not act on the escapes inside it."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return safe(self.inner.format(record), keep="\n\t")


class ConsoleFormatter(logging.Formatter):
    """cliff's terminal format (the message alone), with ``[build step]`` before a
    build's records."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        build_id = getattr(record, "build_id", NONE)
        if build_id == NONE:
            return text
        return f"[{build_id} {getattr(record, 'step', NONE)}] {text}"


def prepare(handler: logging.Handler) -> None:
    """Give ``handler`` the build filter and an escaped formatter (once)."""
    if not any(isinstance(f, BuildFilter) for f in handler.filters):
        handler.addFilter(BuildFilter())
    if not isinstance(handler.formatter, TerminalSafeFormatter):
        handler.setFormatter(TerminalSafeFormatter(handler.formatter or logging.Formatter()))


def prepare_console(handler: logging.Handler) -> None:
    """The terminal handler cliff made: ``[build step]`` prefixes, escaped output."""
    handler.setFormatter(ConsoleFormatter(handler.formatter or logging.Formatter()))
    prepare(handler)


def _is_stdout(handler: logging.Handler) -> bool:
    return (
        isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
        and handler.stream is sys.stdout
    )


def setup(conf: cfg.ConfigOpts, console: logging.Handler | None, version: str) -> None:
    """Add oslo.log's handlers as ``conf`` says, keeping cliff's terminal handler
    (and any other handler already on the root logger, such as cliff's
    ``--log-file`` or a test's capture).

    The root logger stays at DEBUG as cliff set it: each handler has its own
    level, oslo.log's from ``debug`` (INFO unless it is true), the terminal's
    from ``-v``/``-q``; ``default_log_levels`` quiets chatty libraries for all.
    """
    root = logging.getLogger()
    # An earlier setup's handlers (main() run again in one process) are replaced.
    before = [h for h in root.handlers if not getattr(h, _OURS, False)]
    stale = [h for h in root.handlers if getattr(h, _OURS, False)]
    # fix_eventlet: spawnflow uses native threads, no eventlet.
    oslo_logging.setup(conf, PROJECT, version, fix_eventlet=False)
    for handler in stale:
        handler.close()  # oslo.log took it off the root logger
    added = [h for h in root.handlers if h not in before]
    for handler in added:
        setattr(handler, _OURS, True)
        if _is_stdout(handler) and not conf.log_config_append:
            root.removeHandler(handler)  # the fallback: stdout is the command's output
            continue
        if not conf.log_config_append:
            handler.setLevel(logging.DEBUG if conf.debug else logging.INFO)
        prepare(handler)
    takes_over = conf.use_stderr and not conf.log_config_append
    for handler in before:
        if takes_over and handler is console:
            # oslo.log's own stderr handler is the terminal now, at -v/-q's level.
            for added_handler in added:
                if isinstance(added_handler, logging.StreamHandler) and (
                    added_handler.stream is sys.stderr
                ):
                    added_handler.setLevel(console.level)
            continue
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(logging.DEBUG)
