"""``libnet proxy``: network proxies (:mod:`libnet.proxies`) from the command line."""

from __future__ import annotations

import urllib.parse
from types import ModuleType
from typing import Any

import click

_base: ModuleType | None = None


def attach(cli_module: ModuleType) -> None:
    """Add ``proxy`` to the command group of ``cli_module`` (:mod:`agent.cli`, also when
    run as ``__main__``), whose client and helpers its commands use: one module
    instance, so its error classes are the ones raised and caught."""
    global _base
    _base = cli_module
    cli_module.cli.add_command(proxy)


def _cli() -> ModuleType:
    assert _base is not None, "agent.cli_proxy.attach() was not called"
    return _base


def _client(ctx: click.Context) -> Any:
    return _cli()._client(ctx)


@click.group()
def proxy() -> None:
    """Proxies: forward named services from one network to another (kernel NAT), nothing else."""


@proxy.command("create")
@click.argument("name")
@click.option("--from", "source", required=True, help="network the clients are on (NET_A)")
@click.option("--to", "target", required=True, help="network the backends are on (NET_B)")
@click.option(
    "--service",
    "services",
    multiple=True,
    required=True,
    help="ALIAS:PORT[/tcp|udp]: endpoints on NET_B named or aliased ALIAS; repeatable",
)
@click.option("--listen-port", type=int, default=None, help="port clients use on the proxy (one service only)")
@click.pass_context
def proxy_create(
    ctx: click.Context, name: str, source: str, target: str, services: tuple[str, ...], listen_port: int | None
) -> None:
    """Create a proxy NAME: on NET_A each ALIAS resolves to it; connections go to NET_B's ALIAS endpoints."""
    body: dict[str, Any] = {"name": name, "source": source, "target": target, "services": list(services)}
    if listen_port is not None:
        body["listen_port"] = listen_port
    click.echo(_client(ctx).request("POST", "/v1/proxies", body)["id"])


def _services(px: dict[str, Any]) -> str:
    return ", ".join(
        f"{s['alias']}:{s['port']}/{s['protocol']}" + (f" on {s['listen']}" if s["listen"] != s["port"] else "")
        for s in px["services"]
    )


@proxy.command("ls")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def proxy_ls(ctx: click.Context, as_json: bool) -> None:
    """List proxies."""
    pxs = _client(ctx).request("GET", "/v1/proxies")
    if as_json:
        _cli()._emit_json(pxs)
        return
    nets = {n["id"]: n["name"] for n in _client(ctx).request("GET", "/v1/networks")}
    _cli()._table(
        ("PROXY ID", "NAME", "FROM", "TO", "SERVICES", "NODE"),
        [
            (
                p["id"][:12],
                p["name"],
                nets.get(p["source"], p["source"][:12]),
                nets.get(p["target"], p["target"][:12]),
                _services(p),
                p["node"],
            )
            for p in pxs
        ],
    )


@proxy.command("inspect")
@click.argument("refs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def proxy_inspect(ctx: click.Context, refs: tuple[str, ...], as_json: bool) -> None:
    """Show proxies in detail: their legs' addresses and current backends."""
    pxs = [_client(ctx).request("GET", f"/v1/proxies/{urllib.parse.quote(r, safe='')}") for r in refs]
    if as_json:
        _cli()._emit_json(pxs)
        return
    for p in pxs:
        _cli().console.print(f"[bold]{p['name']}[/] {p['id']} on node {p['node']} ({p['scope']})")
        _cli().console.print(f"  services {_services(p)}")
        for leg in ("front", "back"):
            addrs = p.get(leg) or {}
            _cli().console.print(f"  {leg} {_cli()._ip(addrs.get('ipv4'))} {_cli()._ip(addrs.get('ipv6'))}".rstrip())
        for alias, found in sorted((p.get("backends") or {}).items()):
            _cli().console.print(f"  backends of {alias}: {', '.join(found) or 'none (connections are refused)'}")


@proxy.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def proxy_rm(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Remove proxies; tries them all."""
    _cli()._remove_each(ctx, "proxy", refs, lambda r: f"/v1/proxies/{urllib.parse.quote(r, safe='')}")
