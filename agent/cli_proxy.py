"""``libnet proxy``: network proxies (:mod:`libnet.proxies`) from the command line."""

from __future__ import annotations

import urllib.parse
from typing import Any

import click

from agent.cli_output import console, emit_json, remove_each, table
from agent.cli_views import ip
from agent.client import Client


def _client(ctx: click.Context) -> Client:
    client: Client = ctx.obj
    return client


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
        emit_json(pxs)
        return
    nets = {n["id"]: n["name"] for n in _client(ctx).request("GET", "/v1/networks")}
    table(
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
        emit_json(pxs)
        return
    for p in pxs:
        console.print(f"[bold]{p['name']}[/] {p['id']} on node {p['node']} ({p['scope']})")
        console.print(f"  services {_services(p)}")
        for leg in ("front", "back"):
            addrs = p.get(leg) or {}
            console.print(f"  {leg} {ip(addrs.get('ipv4'))} {ip(addrs.get('ipv6'))}".rstrip())
        for alias, found in sorted((p.get("backends") or {}).items()):
            console.print(f"  backends of {alias}: {', '.join(found) or 'none (connections are refused)'}")


@proxy.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def proxy_rm(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Remove proxies; tries them all."""
    remove_each(_client(ctx), "proxy", refs, lambda r: f"/v1/proxies/{urllib.parse.quote(r, safe='')}")
