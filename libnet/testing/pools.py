"""Default pools of the agents and controllers that tests, benchmarks and the demo run.

A network created without a subnet gets one from IPAM's default pools; the
library's own defaults are Docker's (172.17.0.0/16 ... 192.168.0.0/16 for
local networks, 10.0.0.0/8 for global ones, a random ULA /48 for IPv6), which
test hosts must never use.  These pools keep such networks in the
documentation ranges (house rule, DESIGN.md "Test hosts"):

* local (bridge) IPv4: 198.51.100.128/25 cut into /28s (8 networks);
* global (overlay) IPv4: 198.51.100.0/25 cut into /28s (8 networks), apart
  from the local ones so a sandbox on a default bridge and a default overlay
  never sees one subnet twice;
* IPv6: 2001:db8:def::/48 (local) and 2001:db8:df0::/48 (global) cut
  into /64s, prefixes no test names (apart for the same reason).

A test that needs other defaults gives its own (``Config.ipam``, the agent's
``--default-address-pool`` or a ``--config`` file, see :func:`agent_toml`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ipam.pools import IpamConfig

#: (base, size) of each kind of default pool
LOCAL_V4 = ("198.51.100.128/25", 28)
GLOBAL_V4 = ("198.51.100.0/25", 28)
V6 = ("2001:db8:def::/48", 64)
GLOBAL_V6 = ("2001:db8:df0::/48", 64)


def ipam_config() -> IpamConfig:
    """IPAM defaults for a :class:`libnet.config.Config` of a test host (host routes and
    addresses still unset: the controller fills them in from its host namespace)."""
    from ipam.pools import IpamConfig, PoolSpec

    return IpamConfig(
        local_v4=[PoolSpec(*LOCAL_V4)],
        global_v4=[PoolSpec(*GLOBAL_V4)],
        v6_pools=[PoolSpec(*V6)],
        global_v6=[PoolSpec(*GLOBAL_V6)],
    )


def agent_toml(local_v4: tuple[str, int] = LOCAL_V4) -> str:
    """The agent configuration (TOML) of these defaults, ``local_v4`` replaced if given.

    ``default_pools`` carries the local pools, ``global_pools`` the overlays'
    (agent/config.py)."""

    def entry(pool: tuple[str, int]) -> str:
        return f'{{base = "{pool[0]}", size = {pool[1]}}}'

    return (
        f"default_pools = [{entry(local_v4)}, {entry(V6)}]\nglobal_pools = [{entry(GLOBAL_V4)}, {entry(GLOBAL_V6)}]\n"
    )


def agent_flags(*local_v4: tuple[str, int]) -> list[str]:
    """``--default-address-pool`` flags of the local IPv4 pools ``local_v4`` (in order)
    and the local IPv6 pool: the flags replace the configuration's ``default_pools``
    (its ``global_pools`` stay)."""
    return [f for base, size in (*local_v4, V6) for f in ("--default-address-pool", f"base={base},size={size}")]
