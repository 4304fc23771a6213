"""The real :class:`~libnet.kernel.api.Kernel`: this host's kernel through
netlink (:mod:`~libnet.kernel.netlink`, :mod:`~libnet.kernel.sandbox`),
nftables (:mod:`~libnet.kernel.firewall`), named namespaces
(:mod:`~libnet.kernel.netns`) and sysctls (:mod:`~libnet.kernel.sysctl`).

Constructing it touches nothing; each handle it returns is opened on use.
"""

from __future__ import annotations

from libnet.kernel import netns, sysctl
from libnet.kernel.firewall import Firewall
from libnet.kernel.netlink import Netlink
from libnet.kernel.sandbox import SandboxLinks


class HostKernel:
    """The kernel of this host (see the module docstring)."""

    def netlink(self, ns: str | None) -> Netlink:
        return Netlink(ns)

    async def open_sandbox(self, path: str) -> SandboxLinks:
        return await SandboxLinks.open(path)

    def firewall(self, ns: str | None, table: str) -> Firewall:
        return Firewall(ns, table=table)

    def netns_exists(self, name: str) -> bool:
        return netns.exists(name)

    def netns_create(self, name: str) -> str:
        return netns.create(name)

    def netns_delete(self, name: str) -> None:
        netns.delete(name)

    def netns_list(self, prefix: str = "") -> list[str]:
        return netns.list_names(prefix)

    def sysctl_get(self, ns: str | None, key: str | tuple[str, ...]) -> str:
        return sysctl.get(ns, key)

    def sysctl_set(self, ns: str | None, key: str | tuple[str, ...], value: int | str) -> None:
        sysctl.set(ns, key, value)

    async def enable_forwarding(self, ns: str | None) -> None:
        # on a thread inside ``ns``: /proc/sys shows the namespace of the thread that opens it
        await netns.run_in_async(ns, sysctl.set_forwarding, None, True)
