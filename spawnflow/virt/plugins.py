"""One way to load a host plugin by name: volume connectors, VIF drivers, firewall drivers.

Modelled on os-vif's ``PluginBase`` (``os_vif/plugin.py``): each plugin kind is
a package holding a small ABC (its ``base.py``) and one module per driver; the
ABC also derives from :class:`Plugin`, names its stevedore entry point group and the
error it raises, and gets :meth:`Plugin.load`. A deployment adds a driver by
registering an entry point, without changing spawnflow.

All three kinds go through :func:`load`, so a plugin that fails to import is
reported with its real cause (stevedore would log it and go on, and the caller
would then see "unknown driver") and an unknown name says which entry point
group was searched.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

from stevedore.driver import DriverManager
from stevedore.exception import NoMatches

from spawnflow.exceptions import SpawnflowError


def load(
    namespace: str,
    name: str,
    *,
    error: type[SpawnflowError],
    plugin: str,
    selector: str,
    **kwargs: Any,
) -> Any:
    """Instantiate the plugin ``name`` of entry point group ``namespace`` with ``kwargs``.

    Failures raise ``error``: "<plugin> plugin 'x' failed to load: ..." when
    the plugin's import or constructor fails, "unknown <selector> 'x': ..."
    when no entry point has that name. ``kwargs`` are passed only as given, so
    a plugin whose kind passes nothing may take no arguments.
    """

    def _load_failed(_manager: Any, entry_point: Any, exc: BaseException) -> None:
        raise error(f"{plugin} plugin {entry_point.name!r} failed to load: {exc}") from exc

    try:
        manager: DriverManager[Any] = DriverManager(
            namespace=namespace,
            name=name,
            invoke_on_load=True,
            invoke_kwds=kwargs,
            on_load_failure_callback=_load_failed,
        )
    except NoMatches as exc:
        raise error(f"unknown {selector} {name!r}: no {namespace} plugin of that name") from exc
    return manager.driver


class Plugin:
    """Mixed into every plugin kind's ABC: where its drivers are registered and how to load one.

    ``NAMESPACE`` is the entry point group, ``ERROR`` the exception a failed
    load raises, ``PLUGIN`` names the kind in messages ("vif driver") and
    ``SELECTOR`` names what chooses a driver ("vif type").
    """

    NAMESPACE: ClassVar[str]
    ERROR: ClassVar[type[SpawnflowError]]
    PLUGIN: ClassVar[str]
    SELECTOR: ClassVar[str]

    @classmethod
    def load(cls, name: str, **kwargs: Any) -> Self:
        """The driver registered as ``name`` under ``cls.NAMESPACE``, made with ``kwargs``."""
        driver: Self = load(
            cls.NAMESPACE,
            name,
            error=cls.ERROR,
            plugin=cls.PLUGIN,
            selector=cls.SELECTOR,
            **kwargs,
        )
        return driver
