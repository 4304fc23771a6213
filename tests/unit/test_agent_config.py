"""Agent configuration: file, environment, flags; bad values named clearly."""

from __future__ import annotations

import pytest

from agent.config import AgentConfig, load
from libnet.errors import BadRequest


def test_defaults_need_nothing() -> None:
    c = load([], {})
    assert (c.socket, c.store, c.state_dir) == (
        "/run/libnet/libnet.sock",
        "sqlite:///var/lib/libnet/store.db",
        "/var/lib/libnet",
    )
    assert not c.cluster_mode and c.ipv6


def test_precedence_file_env_flags(tmp_path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(
        'log_level = "debug"\nstate_dir = "/from/file"\nmtu = 1400\n'
        'default_pools = [{base = "198.18.0.0/15", size = 24}]\n'
    )
    c = load(
        ["--config", str(f), "--state-dir", "/from/flag", "--no-ipv6"],
        {"LIBNET_STATE_DIR": "/from/env", "LIBNET_LOG_FORMAT": "json"},
    )
    assert (c.log_level, c.state_dir, c.log_format, c.mtu, c.ipv6) == ("debug", "/from/flag", "json", 1400, False)
    cc = c.controller_config()
    assert cc.ipam.local_v4[0].base == "198.18.0.0/15" and cc.mtu == 1400 and not cc.ipv6


def test_cluster_flags() -> None:
    c = load(
        [
            "--advertise",
            "203.0.113.11",
            "--join",
            "203.0.113.12",
            "--join",
            "203.0.113.13",
            "--cluster-store",
            "etcd://203.0.113.20:2379",
        ],
        {},
    )
    assert c.cluster_mode and c.join == ["203.0.113.12", "203.0.113.13"]


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        (["--log-format", "xml"], {}, "log_format"),
        (["--mtu", "big"], {}, "'mtu'"),
        ([], {"LIBNET_IPV6": "maybe"}, "'ipv6'"),
        (["--join", "203.0.113.12"], {}, "--advertise"),
    ],
)
def test_bad_values(argv, env, says) -> None:
    with pytest.raises(BadRequest) as err:
        load(argv, env)
    assert says in str(err.value)


def test_unknown_key_in_file(tmp_path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text('colour = "blue"\n')
    with pytest.raises(BadRequest) as err:
        load(["--config", str(f)], {})
    assert "colour" in str(err.value)
    assert isinstance(AgentConfig(), AgentConfig)


def test_the_shipped_example_loads() -> None:
    import os

    example = os.path.join(os.path.dirname(__file__), "..", "..", "contrib", "agent.toml")
    assert load(["--config", example], {}).reconcile_interval == 300.0


def test_global_pools_v6_are_the_overlays_own(tmp_path) -> None:
    """IPv6 entries of global_pools were merged into one list with default_pools' (so overlays and
    local networks both took its first /64); now they are the global space's alone."""
    f = tmp_path / "agent.toml"
    f.write_text(
        'default_pools = [{base = "198.51.100.128/25", size = 28}, {base = "2001:db8:1::/48", size = 64}]\n'
        'global_pools = [{base = "198.51.100.0/25", size = 28}, {base = "2001:db8:2::/48", size = 64}]\n'
    )
    ipam = load(["--config", str(f)], {}).controller_config().ipam
    assert [p.base for p in ipam.v6_pools] == ["2001:db8:1::/48"]
    assert [p.base for p in ipam.global_v6] == ["2001:db8:2::/48"]
    assert [p.base for p in ipam.global_v4] == ["198.51.100.0/25"]


def test_default_address_pools_v4_and_v6_from_file_and_flag(tmp_path) -> None:
    """Breaker: IPv6 defaults were not settable (a random ULA /48 in documentation-range test hosts);
    dockerd's --default-address-pool form, IPv4 or IPv6, replaces the file's list."""
    f = tmp_path / "agent.toml"
    f.write_text('default_pools = [{base = "198.51.100.0/24", size = 26}, {base = "2001:db8:1::/48", size = 64}]\n')
    ipam = load(["--config", str(f)], {}).controller_config().ipam
    assert [p.base for p in ipam.local_v4] == ["198.51.100.0/24"] and [p.base for p in ipam.v6_pools] == [
        "2001:db8:1::/48"
    ]
    c = load(["--config", str(f), "--default-address-pool", "base=2001:db8:ff::/48,size=64"], {})
    assert c.default_pools == [{"base": "2001:db8:ff::/48", "size": 64}]
    ipam = c.controller_config().ipam
    assert [p.base for p in ipam.v6_pools] == ["2001:db8:ff::/48"] and ipam.local_v4[0].base != "198.51.100.0/24"
    for bad, says in (
        ("base=198.51.100.0/24", "base=CIDR,size=N"),
        ("base=198.51.100.0/24,size=20", "cannot be cut"),
        ("base=198.51.100.1/24,size=28", "without host bits"),
        ("base=nope,size=28", "CIDR"),
    ):
        with pytest.raises(BadRequest, match=says):
            load(["--default-address-pool", bad], {})


def test_encryption_settings_reach_the_library() -> None:
    cfg = load(
        ["--encryption-range", "198.51.100.240/28", "--encryption-port", "51900", "--encryption-rotation", "60"], {}
    )
    lib = cfg.controller_config()
    assert (lib.encryption_range, lib.encryption_port, lib.encryption_rotation) == ("198.51.100.240/28", 51900, 60.0)
    assert load([], {}).controller_config().encryption_rotation == 12 * 3600.0
    with pytest.raises(BadRequest, match="encryption_rotation"):
        load(["--encryption-rotation", "-1"], {})
    assert load(["--encryption-join-timeout", "2.5"], {}).controller_config().encryption_join_timeout == 2.5
    assert load([], {}).controller_config().encryption_join_timeout == 10.0
    with pytest.raises(BadRequest, match="encryption_join_timeout"):
        load(["--encryption-join-timeout", "0"], {})


def test_bad_encryption_settings_are_refused_at_start() -> None:
    """Breaker: a garbage range was accepted and made `agent status` fail for ever; port 65535 made a
    rotation listen on 65536."""
    with pytest.raises(BadRequest, match="invalid encryption range"):
        load(["--encryption-range", "not-a-range"], {})
    with pytest.raises(BadRequest, match="encryption_port must be 1-65534"):
        load(["--encryption-port", "65535"], {})
    assert load(["--encryption-port", "65534"], {}).encryption_port == 65534
