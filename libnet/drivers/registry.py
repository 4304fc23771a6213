"""The built-in drivers (the one explicit list) and the registry of a controller's drivers.

Importing this module imports no driver: :func:`builtin_factories` does, when
the wiring (:mod:`libnet.wiring`) builds the real drivers.  :class:`Drivers`
checks every driver against :class:`~libnet.driverapi.Driver` once, at
registration, and sorts out which ones have the optional capabilities
(:class:`~libnet.driverapi.RemotePeers`, :class:`~libnet.driverapi.ClusterAware`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from libnet.driverapi import ClusterAware, Driver, DriverContext, DriverFactory, RemotePeers
from libnet.errors import InvalidOption


def _bridge(ctx: DriverContext) -> Driver:
    from libnet.drivers.bridge import BridgeDriver

    return BridgeDriver(host_ns=ctx.host_ns, default_mtu=ctx.default_mtu, instance=ctx.instance)


def _null(ctx: DriverContext) -> Driver:
    from libnet.drivers.null import NullDriver

    return NullDriver()


def _overlay(ctx: DriverContext) -> Driver:
    from libnet.drivers.overlay.driver import OverlayDriver

    return OverlayDriver(
        host_ns=ctx.host_ns,
        default_mtu=ctx.default_mtu,
        cluster_store=ctx.cluster_store,
        node=ctx.node,
        vtep=ctx.vtep,
        overlay_prefix=ctx.overlay_prefix,
        anti_entropy_interval=ctx.anti_entropy_interval,
        instance=ctx.instance,
        state_dir=ctx.state_dir,
        encryption_range=ctx.encryption_range,
        encryption_port=ctx.encryption_port,
        encryption_rotation=ctx.encryption_rotation,
        encryption_join_timeout=ctx.encryption_join_timeout,
    )


def builtin_factories() -> dict[str, DriverFactory]:
    """The built-in drivers by name: the one explicit list."""
    return {"bridge": _bridge, "null": _null, "overlay": _overlay}


def build(ctx: DriverContext, factories: Mapping[str, DriverFactory] | None = None) -> Drivers:
    """Every driver of ``factories`` (default: the built-in ones), built from ``ctx``."""
    return Drivers({name: make(ctx) for name, make in (factories or builtin_factories()).items()})


class Drivers(Mapping[str, Driver]):
    """A controller's drivers by name, checked once against their contracts."""

    def __init__(self, drivers: Mapping[str, Driver]) -> None:
        for name, drv in drivers.items():
            if not isinstance(drv, Driver):
                raise TypeError(f"driver {name!r} ({type(drv).__name__}) does not implement libnet.driverapi.Driver")
        self._drivers = dict(drivers)
        self._remote = [d for d in self._drivers.values() if isinstance(d, RemotePeers)]
        self._cluster = [d for d in self._drivers.values() if isinstance(d, ClusterAware)]

    def __getitem__(self, name: str) -> Driver:
        return self._drivers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._drivers)

    def __len__(self) -> int:
        return len(self._drivers)

    def driver(self, name: str) -> Driver:
        """The driver called ``name``; ``InvalidOption`` naming the available ones otherwise."""
        try:
            return self._drivers[name]
        except KeyError:
            raise InvalidOption(
                f"unknown driver {name!r}; available: {', '.join(sorted(self._drivers))}", driver=name
            ) from None

    def remote_peers(self) -> list[RemotePeers]:
        """The drivers that know other hosts' endpoints."""
        return list(self._remote)

    def cluster_aware(self) -> list[ClusterAware]:
        """The drivers that use cluster membership."""
        return list(self._cluster)

    async def close(self) -> None:
        for drv in self._drivers.values():
            await drv.close()
