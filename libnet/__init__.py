"""libnet: networks for containers.

The public API: :class:`Controller` (async) and :class:`SyncController`
(blocking, for scripts), configured by one :class:`Config`; the stored
objects :class:`Network`, :class:`Endpoint`, :class:`Sandbox`; the typed
errors.  Drivers implement :mod:`libnet.driverapi`; the kernel layer is
:mod:`libnet.kernel`.
"""

from libnet.config import Config
from libnet.controller import Controller
from libnet.driverapi import PortMapping
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
    NoSuchSandbox,
    NotANamespace,
    NotFound,
    PoolOverlap,
    Unavailable,
)
from libnet.model import Endpoint, Network, Sandbox
from libnet.sync import SyncController

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
    "NoSuchSandbox",
    "NotANamespace",
    "NotFound",
    "PoolOverlap",
    "PortMapping",
    "Sandbox",
    "SyncController",
    "Unavailable",
    "__version__",
]
