"""Docker's IpamDriver calls, mapped onto libnet's IPAM (:mod:`ipam.api`).

libnet's IPAM is shaped like Docker's (pool ids, ``RequestAddressType``,
addresses as CIDR), so this is a thin translation.  Pools and addresses are
held for Docker: no ``owner`` (libnet's reconcile frees only orphans of a
named owner) and the instance ``docker:<instance>``, so they stay until
Docker releases them (``network rm``, container removal).
"""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING, Any

from ipam.api import GATEWAY_TYPE, OPT_INSTANCE, REQUEST_ADDRESS_TYPE, SPACES
from libnet.errors import AddressNotAllocated, BadRequest, Conflict, InvalidOption, NoSuchPool

if TYPE_CHECKING:
    from libnet.controller import Controller


#: the instance option of what this driver holds for Docker (``docker:<libnet instance>``)
HOLDER_PREFIX = "docker:"


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string", field=key)
    return value


class DockerIpam:
    def __init__(self, controller: Controller) -> None:
        self.ctl = controller

    @property
    def _holder(self) -> dict[str, Any]:
        return {OPT_INSTANCE: f"{HOLDER_PREFIX}{self.ctl.instance}"[:64]}

    async def _dockers(self, pool_id: str) -> None:
        """``NoSuchPool`` for an unknown pool, ``Conflict`` for one not held for Docker (a libnet network's:
        its id is its subnet, easily given): its addresses and the pool itself are not Docker's to take
        or give back."""
        owners = [p for p in await self.ctl.ipam.pool_owners() if p.pool_id == pool_id]
        if not owners:
            raise NoSuchPool("no such pool", pool_id=pool_id)
        if owners[0].owner or not owners[0].instance.startswith(HOLDER_PREFIX):
            raise Conflict(
                f"pool {pool_id} is not held for Docker (a libnet network's pool): Docker's IPAM calls use "
                "the pools RequestPool gave",
                pool_id=pool_id,
            )

    async def get_capabilities(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    async def get_default_address_spaces(self, req: dict[str, Any]) -> dict[str, Any]:
        local, global_ = self.ctl.ipam.default_address_spaces()
        return {"LocalDefaultAddressSpace": local, "GlobalDefaultAddressSpace": global_}

    async def request_pool(self, req: dict[str, Any]) -> dict[str, Any]:
        space = _opt_str(req, "AddressSpace") or "local"
        if space not in SPACES:
            raise InvalidOption(f"libnet's address spaces are {' and '.join(SPACES)}, not {space!r}", space=space)
        options = req.get("Options") or {}
        if not isinstance(options, dict):
            raise BadRequest("Options must be an object")
        unknown = sorted(set(options) - {"gateway"})
        if unknown:  # --ipam-opt: only what libnet's IPAM understands
            raise InvalidOption(f"unknown --ipam-opt {', '.join(unknown)}; libnet's IPAM knows: gateway")
        opts = {**self._holder, **options}
        pool = await self.ctl.ipam.request_pool(
            space, _opt_str(req, "Pool"), _opt_str(req, "SubPool"), options=opts, v6=bool(req.get("V6"))
        )
        return {"PoolID": pool.id, "Pool": pool.subnet, "Data": dict(pool.data)}

    async def release_pool(self, req: dict[str, Any]) -> dict[str, Any]:
        pool_id = _opt_str(req, "PoolID")
        if pool_id is None:
            raise BadRequest("PoolID is required")
        with suppress(NoSuchPool):  # gone already: success
            await self._dockers(pool_id)
            await self.ctl.ipam.release_pool(pool_id)
        return {}

    async def request_address(self, req: dict[str, Any]) -> dict[str, Any]:
        pool_id = _opt_str(req, "PoolID")
        if pool_id is None:
            raise BadRequest("PoolID is required")
        options = req.get("Options") or {}
        if not isinstance(options, dict):
            raise BadRequest("Options must be an object")
        await self._dockers(pool_id)
        opts = dict(self._holder)
        if options.get(REQUEST_ADDRESS_TYPE) == GATEWAY_TYPE:
            opts[REQUEST_ADDRESS_TYPE] = GATEWAY_TYPE
        address = await self.ctl.ipam.request_address(pool_id, _opt_str(req, "Address"), opts)
        return {"Address": address, "Data": {}}

    async def release_address(self, req: dict[str, Any]) -> dict[str, Any]:
        pool_id, address = _opt_str(req, "PoolID"), _opt_str(req, "Address")
        if pool_id is None or address is None:
            raise BadRequest("PoolID and Address are required")
        # not allocated (the pool's own gateway, a repeated release): success, as Docker expects
        with suppress(AddressNotAllocated, NoSuchPool):
            await self._dockers(pool_id)
            await self.ctl.ipam.release_address(pool_id, address.split("/", 1)[0])
        return {}
