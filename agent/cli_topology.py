"""``libnet topology``: hosts -> networks -> sandboxes and endpoints, with
addresses, VTEPs and peer state, as a terminal tree (rich), Graphviz DOT
(``--format dot``, e.g. ``libnet topology --format dot | dot -Tsvg > net.svg``)
or JSON (``--json``, the shape of ``GET /v1/topology``: see
:mod:`agent.topology`)."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

import click

from agent.cli_output import console, emit_json
from agent.client import Client

if TYPE_CHECKING:
    from rich.tree import Tree

#: how a peer state is drawn: (rich style, DOT edge style)
PEER_STYLE = {
    "local": ("green", "solid"),
    "programmed": ("green", "solid"),
    "pending": ("yellow", "dashed"),
    "not needed": ("dim", "dotted"),
    "host gone": ("red", "dashed"),
}
STATUS_STYLE = {"alive": "green", "failed": "red", "left": "dim", "leaving": "yellow"}


def _addr(cidr: str | None) -> str:
    return str(ipaddress.ip_interface(cidr).ip) if cidr else ""


def _ep_text(e: dict[str, Any]) -> str:
    addrs = " ".join(a for a in (_addr(e.get("ipv4")), _addr(e.get("ipv6"))) if a)
    extra = f" aliases {', '.join(e['aliases'])}" if e.get("aliases") else ""
    peer = e.get("peer", "local")
    via = f" via VTEP {e['vtep']}" if e.get("vtep") else ""
    return f"{e.get('ifname') or '-'} {e['name']} {addrs} {e['mac']}{extra} [{peer}{via}]"


def _subnets(n: dict[str, Any]) -> str:
    return " ".join(s for s in (n.get("ipv4_subnet"), n.get("ipv6_subnet")) if s)


def tree(topo: dict[str, Any]) -> Tree:
    """The topology as a rich Tree."""
    from rich.markup import escape  # here: rich is imported only by the commands that draw with it
    from rich.tree import Tree

    root = Tree(f"[bold]libnet topology[/] (as seen from {escape(topo['node'])})")
    for h in topo["hosts"]:
        status = h.get("status", "unknown")
        address = f" {escape(h['address'])}" if h.get("address") else ""
        label = (
            f"[bold]host {escape(h['name'])}[/]{address} "
            f"[{STATUS_STYLE.get(status, 'yellow')}]{escape(status)}[/]"
            + (f" VTEP {escape(h['vtep'])}" if h.get("vtep") else "")
            + (" [cyan](this host)[/]" if h.get("self") else "")
        )
        host = root.add(label)
        if not h["networks"]:
            host.add("[dim](no networks with endpoints here)[/]")
        for n in h["networks"]:
            flags = " internal" if n.get("internal") else ""
            net = host.add(
                f"[bold blue]network {escape(n['name'])}[/] {n['driver']} ({n['scope']}){flags} "
                f"{escape(_subnets(n))} [dim]{n['id'][:12]}[/]"
            )
            for sb in n["sandboxes"]:
                name = f"{escape(sb['hostname'])} " if sb.get("hostname") else ""
                node = net.add(f"sandbox {name}[dim]{escape(sb['id'][:12])}[/]")
                for e in sb["endpoints"]:
                    node.add(f"[{PEER_STYLE.get(e.get('peer', ''), ('white', ''))[0]}]{escape(_ep_text(e))}[/]")
            for e in n["endpoints"]:
                net.add(f"[dim]not joined:[/] {escape(_ep_text(e))}")
    return root


def _q(text: str) -> str:
    """A DOT quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _node(ident: str, shape: str, label: str, indent: str = "    ") -> str:
    return f"{indent}{_q(ident)} [shape={shape}, label={_q(label)}];"


def dot(topo: dict[str, Any]) -> str:
    """The topology as a Graphviz digraph: a cluster per host holding its
    sandboxes and endpoints (and its local networks); global networks outside,
    shared by the hosts; edges styled by peer state and labelled with the VTEP."""
    title = "libnet topology as seen from " + topo["node"]
    lines = ["digraph libnet {", "  rankdir=LR;", '  node [fontname="monospace", fontsize=10];']
    lines.append(f"  label={_q(title)};")
    shared: dict[str, dict[str, Any]] = {}
    edges: list[str] = []
    for i, h in enumerate(topo["hosts"]):
        host_label = " ".join(x for x in ("host", h["name"], h.get("address") or "", h.get("status", "")) if x)
        lines += [f"  subgraph cluster_{i} {{", f"    label={_q(host_label)};", '    style=rounded; color="grey";']
        for n in h["networks"]:
            net_id = "net:" + n["id"]
            if n["scope"] == "global":
                shared[net_id] = n
            else:
                lines.append(_node(net_id, "hexagon", f"{n['name']}\n{n['driver']}\n{_subnets(n)}"))
            for sb in n["sandboxes"]:
                sb_id = f"sb:{h['name']}:{sb['id']}"
                lines.append(_node(sb_id, "box", f"{sb.get('hostname') or ''}\n{sb['id'][:12]}"))
                edges += [f"  {_q(sb_id)} -> {_q('ep:' + e['id'])};" for e in sb["endpoints"]]
            for e in [e for sb in n["sandboxes"] for e in sb["endpoints"]] + n["endpoints"]:
                addrs = "\n".join(a for a in (_addr(e.get("ipv4")), _addr(e.get("ipv6"))) if a)
                lines.append(_node("ep:" + e["id"], "ellipse", f"{e.get('ifname') or '-'} {e['name']}\n{addrs}"))
                style = PEER_STYLE.get(e.get("peer", ""), ("", "solid"))[1]
                label = e.get("peer", "") + (f"\nVTEP {e['vtep']}" if e.get("vtep") else "")
                edges.append(f"  {_q('ep:' + e['id'])} -> {_q(net_id)} [style={style}, label={_q(label)}];")
        lines.append("  }")
    for net_id, n in shared.items():
        lines.append(_node(net_id, "hexagon", f"{n['name']}\n{n['driver']}\n{_subnets(n)}", "  "))
    return "\n".join([*lines, *edges, "}"]) + "\n"


@click.command("topology")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["tree", "dot", "json"]),
    default="tree",
    show_default=True,
    help="tree, Graphviz, or JSON (as --json)",
)
@click.option("--json", "as_json", is_flag=True, help="print JSON (the agent's /v1/topology)")
@click.pass_context
def topology(ctx: click.Context, fmt: str, as_json: bool) -> None:
    """Draw the network: hosts -> networks -> sandboxes and endpoints, with
    addresses, VTEPs and peer state (local; programmed: this host has the
    FDB/neighbour entries toward its VTEP; pending; not needed: no endpoint of
    that network here; host gone)."""
    client: Client = ctx.obj
    topo = client.request("GET", "/v1/topology")
    if as_json or fmt == "json":
        emit_json(topo)
    elif fmt == "dot":
        click.echo(dot(topo), nl=False)
    else:
        console.print(tree(topo), highlight=False)
