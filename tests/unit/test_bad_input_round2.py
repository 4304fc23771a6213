"""What a breaker found after issue 14's first pass: each a kind of input that was
accepted, gave a 500 or a misleading message (issue 14)."""

from __future__ import annotations

import pytest

from ipam.pools import parse_subnet
from libnet.errors import Conflict, InvalidOption, InvalidSubnet
from libnet.validation import check_int, check_labels


@pytest.mark.parametrize("text", ["\u00b2", "\u0661\u0665\u0660\u0660", "\uff11\uff14\uff10\uff10"])
def test_unicode_digits_are_not_numbers(text: str) -> None:
    with pytest.raises(InvalidOption, match="whole number"):
        check_int(text, "mtu", 68, 65535)


def test_labels_are_bounded() -> None:
    check_labels({f"k{i}": "v" for i in range(256)})
    for bad in ({f"k{i}": "v" for i in range(257)}, {"k": "v" * 4097}, {"": "v"}, {"k" * 254: "v"}):
        with pytest.raises(InvalidOption):
            check_labels(bad)


@pytest.mark.parametrize(
    ("cidr", "why"),
    [
        ("::/0", "whole address space"),
        ("0.0.0.0/0", "whole address space"),
        ("2001:db8:3::%eth0/64", "zone index"),
        ("ff02::/64", "multicast"),
        ("::/96", "unspecified"),
    ],
)
def test_subnet_refusals_give_the_right_reason(cidr: str, why: str) -> None:
    with pytest.raises(InvalidSubnet, match=why) as err:
        parse_subnet(cidr)
    assert "interfaces'" not in str(err.value)


async def test_connect_messages_and_undo(tmp_path) -> None:
    """Connecting a sandbox twice says so (not "name in use"); --ip on the gateway or an
    aux address names which; a connect failing after its join leaves nothing joined."""
    from libnet import Config, Controller
    from libnet.store.memory import MemoryStore
    from libnet.testing.fakes import FakeDriver, FakeNamespaces

    drv = FakeDriver("bridge")
    ctl = Controller(
        Config(state_dir=str(tmp_path), resolv_conf=str(tmp_path / "resolv.conf")),
        store=MemoryStore(),
        drivers={"bridge": drv},
        namespaces=FakeNamespaces(),
    )
    await ctl.start()
    try:
        await ctl.create_network(
            "web", ipv4_subnet="198.51.100.0/24", ipv6=False, aux_addresses={"router": "198.51.100.10"}
        )
        sb = await ctl.create_sandbox("r5")
        await ctl.connect("web", sb.id)
        with pytest.raises(Conflict, match="already on network web"):
            await ctl.connect("web", sb.id)
        other = await ctl.create_sandbox("r6")
        with pytest.raises(Conflict, match="gateway"):
            await ctl.connect("web", other.id, ipv4="198.51.100.1")
        with pytest.raises(Conflict, match="auxiliary address 'router'"):
            await ctl.connect("web", other.id, ipv4="198.51.100.10")

        async def broken_sync(sandbox_id, *_):  # a failure after the join reached the store
            raise RuntimeError("injected after join")

        ctl._dns_sync = broken_sync
        with pytest.raises(RuntimeError, match="injected after join"):
            await ctl.connect("web", other.id)
        assert [e.name for e in await ctl.endpoints()] == ["ep-r5"]
        assert (await ctl.sandbox(other.id)).endpoints == []
    finally:
        await ctl.close()
