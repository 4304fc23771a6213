"""libnet: networks for containers.

The public API.  Controller, configuration and model types arrive with their
issues; today the package offers the typed errors and the kernel layer
(:mod:`libnet.kernel`).
"""

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
    NotFound,
    PoolOverlap,
    Unavailable,
)

__version__ = "0.1.0"

__all__ = [
    "AddressInUse",
    "BadRequest",
    "Conflict",
    "InvalidName",
    "InvalidOption",
    "InvalidSubnet",
    "KernelError",
    "LibnetError",
    "NameInUse",
    "NoSuchEndpoint",
    "NoSuchLink",
    "NoSuchNamespace",
    "NoSuchNetwork",
    "NoSuchSandbox",
    "NotFound",
    "PoolOverlap",
    "Unavailable",
    "__version__",
]
