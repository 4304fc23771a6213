"""The typed error hierarchy and errno translation."""

from __future__ import annotations

import errno

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from libnet import errors
from libnet.kernel.errors import from_errno, is_gone, translate


def test_hierarchy_and_ids() -> None:
    err = errors.NoSuchNetwork("no such network", network_id="abc", name=None)
    assert isinstance(err, errors.NotFound) and isinstance(err, errors.LibnetError)
    assert err.ids == {"network_id": "abc"}  # None-valued ids are dropped
    assert str(err) == "no such network (network_id=abc)"
    assert err.to_dict() == {
        "kind": "not_found",
        "type": "NoSuchNetwork",
        "message": "no such network",
        "network_id": "abc",
    }
    for cls, family in [
        (errors.NameInUse, errors.Conflict),
        (errors.AddressInUse, errors.Conflict),
        (errors.PoolOverlap, errors.Conflict),
        (errors.InvalidSubnet, errors.BadRequest),
        (errors.NoSuchEndpoint, errors.NotFound),
        (errors.NoSuchSandbox, errors.NotFound),
    ]:
        assert issubclass(cls, family)


@pytest.mark.parametrize(
    ("code", "family"),
    [
        (errno.EEXIST, errors.Conflict),
        (errno.ENOENT, errors.NotFound),
        (errno.ENODEV, errors.NotFound),
        (errno.EINVAL, errors.BadRequest),
        (errno.EBUSY, errors.Unavailable),
        (errno.EPERM, errors.KernelPermissionDenied),
        (errno.ELOOP, errors.KernelError),
    ],
)
def test_errno_translation(code: int, family: type) -> None:
    err = from_errno(code, "create link", ifname="br0")
    assert isinstance(err, family) and isinstance(err, errors.KernelError)
    assert err.errno == code and err.ids == {"ifname": "br0"}
    assert err.to_dict()["errno"] == code
    assert err.message.startswith("create link: ")


def test_translate_netlink_and_os_errors() -> None:
    nl = translate(NetlinkError(errno.EEXIST, "File exists"), "add", ifname="x")
    assert isinstance(nl, errors.KernelObjectExists) and nl.errno == errno.EEXIST
    os_err = translate(FileNotFoundError(errno.ENOENT, "gone"), "open")
    assert isinstance(os_err, errors.KernelObjectMissing)
    assert type(translate(RuntimeError("odd"), "x")) is errors.KernelError
    assert is_gone(NetlinkError(errno.ENODEV)) and not is_gone(NetlinkError(errno.EEXIST))
