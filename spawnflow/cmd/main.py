"""The ``spawnflow`` command (cliff): spawn, history, db."""

from __future__ import annotations

import sys

from cliff.app import App
from cliff.commandmanager import CommandManager

from spawnflow import conf as sf_conf
from spawnflow.exceptions import SpawnflowError


class SpawnflowApp(App):
    def __init__(self) -> None:
        super().__init__(description="Durable, revertible VM spawns on a libvirt host.",
                         version="0.1.0", command_manager=CommandManager("spawnflow.cli"),
                         deferred_help=True)
        self._conf = None

    def build_option_parser(self, description, version, argparse_kwargs=None):  # noqa: ANN001
        parser = super().build_option_parser(description, version, argparse_kwargs)
        parser.add_argument("--config-file", action="append", default=[], metavar="PATH",
                            help="oslo.config file (repeatable)")
        return parser

    @property
    def conf(self):  # noqa: ANN201 - oslo ConfigOpts
        """The configuration, loaded once from --config-file."""
        if self._conf is None:
            argv = []
            for path in self.options.config_file:
                argv += ["--config-file", path]
            self._conf = sf_conf.load(argv)
        return self._conf

    def clean_up(self, cmd, result, err):  # noqa: ANN001 - cliff hook
        if isinstance(err, SpawnflowError):
            self.LOG.debug("command failed", exc_info=err)


def main(argv: list[str] | None = None) -> int:
    app = SpawnflowApp()
    return app.run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
