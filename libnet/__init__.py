"""libnet: networks for containers.

The public API: :class:`Controller` (async) and :class:`SyncController`
(blocking, for scripts), configured by one :class:`Config`; the stored
objects :class:`Network`, :class:`Endpoint`, :class:`Sandbox`; the typed
errors.  Drivers implement :mod:`libnet.driverapi`; the kernel layer is
:mod:`libnet.kernel`.
"""

from typing import TYPE_CHECKING, Any

from libnet.errors import (
    AddressInUse,
    BadRequest,
    Conflict,
    InvalidName,
    InvalidOption,
    InvalidSubnet,
    KernelError,
    LibnetError,
    NameInUse,
    NoSuchEndpoint,
    NoSuchLink,
    NoSuchNamespace,
    NoSuchNetwork,
    NoSuchProxy,
    NoSuchSandbox,
    NotANamespace,
    NotFound,
    PoolOverlap,
    ProxyInUse,
    Unavailable,
)

if TYPE_CHECKING:
    from libnet.config import Config
    from libnet.controller import Controller
    from libnet.driverapi import PortMapping
    from libnet.model import Endpoint, Network, Proxy, Sandbox
    from libnet.sync import SyncController

# Imported on first use (PEP 562): ``import libnet.errors`` -- what the CLI, ipam
# and the CNI plugins need -- must not load the controller, the drivers and the
# DNS server (issue 17).
_LAZY = {
    "Config": "libnet.config",
    "Controller": "libnet.controller",
    "PortMapping": "libnet.driverapi",
    "Endpoint": "libnet.model",
    "Network": "libnet.model",
    "Sandbox": "libnet.model",
    "Proxy": "libnet.model",
    "SyncController": "libnet.sync",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'libnet' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "AddressInUse",
    "BadRequest",
    "Config",
    "Conflict",
    "Controller",
    "Endpoint",
    "InvalidName",
    "InvalidOption",
    "InvalidSubnet",
    "KernelError",
    "LibnetError",
    "NameInUse",
    "Network",
    "NoSuchEndpoint",
    "NoSuchLink",
    "NoSuchNamespace",
    "NoSuchNetwork",
    "NoSuchProxy",
    "NoSuchSandbox",
    "NotANamespace",
    "NotFound",
    "PoolOverlap",
    "PortMapping",
    "Proxy",
    "ProxyInUse",
    "Sandbox",
    "SyncController",
    "Unavailable",
    "__version__",
]
