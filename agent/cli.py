"""``libnet``: the command-line client of libnet-agent, shaped like ``docker network``.

Every read command takes ``--json``; ``--socket`` (or ``LIBNET_SOCKET``)
picks the agent.  Failures print what went wrong and what to do, and exit
non-zero: 1 for a refused request, 3 when the agent cannot be reached.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Callable
from typing import Any

import click

from agent.cli_extras import network_prune, sandbox_inspect, version
from agent.cli_output import (
    Listing,
    compile_template,
    console,
    emit_json,
    fetch_each,
    list_options,
    raise_missing,
    remove_each,
    slow_status,
)
from agent.cli_proxy import proxy
from agent.cli_topology import topology
from agent.cli_views import (
    NETWORK_DETAIL,
    NETWORKS,
    NODES,
    SANDBOXES,
    endpoint_view,
    print_endpoint,
    print_network,
)
from agent.cli_views import ip as address
from agent.client import AgentError, Client, Unreachable
from agent.paths import DEFAULT_SOCKET
from libnet.errors import LibnetError

__all__ = ["AgentError", "Client", "Unreachable", "cli", "main"]


def _client(ctx: click.Context) -> Client:
    client: Client = ctx.obj
    return client


#: driver options that may stand alone, as Docker's ``-o encrypted`` (meaning on)
BARE_OPTIONS = ("encrypted",)


def _kv(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        if v in BARE_OPTIONS:
            out[v] = ""
            continue
        if "=" not in v:
            raise click.BadParameter(f"{what} must look like KEY=VALUE, got {v!r}")
        k, _, val = v.partition("=")
        out[k] = val
    return out


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """``libnet --version``: one line, as ``docker --version`` (no agent asked)."""
    if not value or ctx.resilient_parsing:
        return
    import libnet

    click.echo(f"libnet version {libnet.__version__}")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="print the client's version and exit (libnet version: the agent's too)",
)
@click.option(
    "--socket",
    "socket_path",
    envvar="LIBNET_SOCKET",
    default=DEFAULT_SOCKET,
    show_default=True,
    help="the agent's unix socket",
)
@click.pass_context
def cli(ctx: click.Context, socket_path: str) -> None:
    """Manage libnet networks, sandboxes and endpoints through libnet-agent."""
    ctx.obj = Client(socket_path)
    ctx.obj.progress = slow_status


# --- networks ---------------------------------------------------------------------


@cli.group()
def network() -> None:
    """Manage networks."""


@network.command("create")
@click.argument("name")
@click.option("-d", "--driver", default="bridge", show_default=True)
@click.option("--subnet", help="IPv4 subnet (default: the next free default pool)")
@click.option("--gateway", help="IPv4 gateway (default: first address)")
@click.option("--ipv6/--no-ipv6", default=None, help="dual-stack (default) or IPv4 only")
@click.option("--subnet6", help="IPv6 subnet (default: a /64 of the cluster's ULA)")
@click.option("--gateway6")
@click.option("--ip-range", "ip_range", help="hand out IPv4 addresses only from this CIDR inside --subnet")
@click.option("--ip-range6", "ip_range6", help="hand out IPv6 addresses only from this CIDR inside --subnet6")
@click.option(
    "--aux-address",
    "aux",
    multiple=True,
    metavar="NAME=IP",
    help="reserve IP (in --subnet or --subnet6) for something else; never handed out (repeatable)",
)
@click.option(
    "--allow-route-overlap",
    is_flag=True,
    help="accept a --subnet/--subnet6 that overlaps a route of the host (never one holding a host address)",
)
@click.option("--internal", is_flag=True, help="no way out of the network")
@click.option("-o", "--opt", multiple=True, help="driver option KEY=VALUE (e.g. mtu=1400, icc=false), or encrypted")
@click.option("--label", multiple=True, help="KEY=VALUE")
@click.pass_context
def network_create(
    ctx: click.Context,
    name: str,
    driver: str,
    subnet: str | None,
    gateway: str | None,
    ipv6: bool | None,
    subnet6: str | None,
    gateway6: str | None,
    ip_range: str | None,
    ip_range6: str | None,
    aux: tuple[str, ...],
    allow_route_overlap: bool,
    internal: bool,
    opt: tuple[str, ...],
    label: tuple[str, ...],
) -> None:
    """Create a network.

    Subnets that cannot carry containers are refused with the reason: loopback,
    multicast, link-local, unspecified, IPv4-mapped, reserved, one that holds an
    address of this host, one that overlaps a host route (unless
    --allow-route-overlap); so are gateways and aux addresses outside their
    subnet or on its network/broadcast address."""
    try:
        from libnet.validation import parse_aux_args  # here: it loads the model and asyncio (~30% of startup)

        aux_addresses = parse_aux_args(aux)
    except LibnetError as exc:
        raise click.BadParameter(str(exc), param_hint="--aux-address") from None
    body = {
        "name": name,
        "driver": driver,
        "ipv4_subnet": subnet,
        "ipv4_gateway": gateway,
        "ipv6": ipv6,
        "ipv6_subnet": subnet6,
        "ipv6_gateway": gateway6,
        "ipv4_range": ip_range,
        "ipv6_range": ip_range6,
        "aux_addresses": aux_addresses,
        "allow_route_overlap": allow_route_overlap or None,
        "internal": internal,
        "options": _kv(opt, "an option"),
        "labels": _kv(label, "a label"),
    }
    nw = _client(ctx).request("POST", "/v1/networks", {k: v for k, v in body.items() if v not in (None, {})})
    click.echo(nw["id"])


@network.command("ls")
@list_options
@click.pass_context
def network_ls(ctx: click.Context, as_json: bool, quiet: bool, filters: tuple[str, ...], fmt: str | None) -> None:
    """List networks.

    Filters: name (as docker: a part, or a regex: ^web$), id (a prefix), driver, scope (local,
    global), label (KEY or KEY=VALUE).  Template fields: .ID .Name .Driver
    .Scope .IPv4 .IPv6 .Internal .Labels .Options .CreatedAt, {{.Label "KEY"}}."""
    listing = Listing.check(NETWORKS, filters, fmt, quiet, as_json)
    listing.print(_client(ctx).request("GET", "/v1/networks"))


@network.command("inspect")
@click.argument("refs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option(
    "-f",
    "--format",
    "fmt",
    metavar="FORMAT",
    help="json (as --json), or a template printed per network: '{{.Id}} {{.Name}}', '{{json .Labels}}'",
)
@click.pass_context
def network_inspect(ctx: click.Context, refs: tuple[str, ...], as_json: bool, fmt: str | None) -> None:
    """Show networks in detail: subnets, options, labels, and their endpoints
    with addresses, aliases, services and published ports.

    Template fields: those of network ls (.ID in full, also as .Id), .Created,
    .Endpoints (their names), {{.Label "KEY"}}, {{json .}}."""
    as_json = as_json or (fmt or "").strip() == "json"
    render = None if as_json or fmt is None else compile_template(NETWORK_DETAIL, fmt)
    nets = fetch_each(_client(ctx), "network", refs, lambda r: f"/v1/networks/{urllib.parse.quote(r, safe='')}")
    if as_json:
        emit_json(nets)
    elif render is not None:
        for n in nets:
            click.echo(render(n))
    else:
        for n in nets:
            print_network(n)
    raise_missing("network", refs, nets)


@network.command("rotate-keys")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def network_rotate_keys(ctx: click.Context, as_json: bool) -> None:
    """Rotate this host's WireGuard key pair (encrypted overlays) without losing a packet."""
    client = _client(ctx)
    client.timeout = 150  # acknowledgements (15 s) and the old key's drain (up to 60 s)
    r = client.request("POST", "/v1/encryption/rotate")
    if as_json:
        return emit_json(r)
    click.echo(f"{r['interface']}: new key {r['public_key']}, tunnel address {r['tunnel_address']}")


@network.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def network_rm(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Remove networks (they must have no endpoints); tries them all, like docker network rm."""
    _remove_each(ctx, "network", refs, lambda r: f"/v1/networks/{urllib.parse.quote(r, safe='')}")


# --- connect ----------------------------------------------------------------------


PORT_USAGE = (
    "a port is [[IP:]HOST:]CONTAINER[/tcp|udp], an IPv6 IP in brackets ([::1]:8080:80); "
    "no HOST (CONTAINER, or IP::CONTAINER): any free port"
)


def _port(spec: str) -> dict[str, Any]:
    """A ``-p`` value as Docker writes it: ``CONTAINER``, ``HOST:CONTAINER``,
    ``IP:HOST:CONTAINER`` or ``IP::CONTAINER``, with ``/tcp`` or ``/udp``;
    an IPv6 ``IP`` in brackets (``[::1]:9091:90``, ``[2001:db8::1]::80``)."""
    text, proto = spec, "tcp"
    if "/" in text:
        text, proto = text.rsplit("/", 1)
    host_ip = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise click.BadParameter(f"{PORT_USAGE}; got {spec!r}")
        host_ip, text = text[1:end], text[end + 2 :]
        parts = text.split(":")
        if len(parts) != 2:
            raise click.BadParameter(f"{PORT_USAGE}; got {spec!r}")
        try:
            if ipaddress.ip_address(host_ip).version != 6:
                raise ValueError
        except ValueError:
            raise click.BadParameter(f"{host_ip!r} in brackets is not an IPv6 address; {PORT_USAGE}") from None
        parts = [host_ip, *parts]
    else:
        parts = text.split(":")
        if len(parts) > 3:
            raise click.BadParameter(f"{PORT_USAGE} (an IPv6 address needs brackets); got {spec!r}")
    try:
        if len(parts) == 1:  # CONTAINER: any free host port
            return {"host_port": 0, "container_port": _num(parts[0]), "protocol": proto}
        if len(parts) == 2:
            return {"host_port": _num(parts[0]), "container_port": _num(parts[1]), "protocol": proto}
        # IP:HOST:CONTAINER, IP::CONTAINER
        if host_ip is None and ipaddress.ip_address(parts[0]).version != 4:
            raise ValueError
        host = _num(parts[1]) if parts[1] else 0
        return {"host_ip": parts[0], "host_port": host, "container_port": _num(parts[2]), "protocol": proto}
    except ValueError:
        pass
    raise click.BadParameter(f"{PORT_USAGE}; got {spec!r}")


def _num(text: str) -> int:
    """A port number as written (digits only: no sign, no spaces)."""
    if not text.isascii() or not text.isdigit():
        raise ValueError(text)
    return int(text)


@cli.command()
@click.argument("network_ref")
@click.argument("sandbox")
@click.option("--name", help="endpoint name (default: the sandbox's hostname)")
@click.option("--ip", help="IPv4 address")
@click.option("--ip6", help="IPv6 address")
@click.option("--alias", multiple=True, help="DNS alias (repeatable)")
@click.option("--service", multiple=True, help="NAME:PORT[/tcp|udp], published as a DNS SRV record (repeatable)")
@click.option(
    "-p", "--publish", multiple=True, help="[[IP:]HOST:]CONTAINER[/tcp|udp]; without HOST a free port (repeatable)"
)
@click.pass_context
def connect(
    ctx: click.Context,
    network_ref: str,
    sandbox: str,
    name: str | None,
    ip: str | None,
    ip6: str | None,
    alias: tuple[str, ...],
    service: tuple[str, ...],
    publish: tuple[str, ...],
) -> None:
    """Connect a sandbox to a network."""
    body = {
        "sandbox": sandbox,
        "name": name,
        "ipv4": ip,
        "ipv6": ip6,
        "aliases": list(alias) or None,
        "services": list(service) or None,
        "ports": [_port(p) for p in publish] or None,
    }
    ep = _client(ctx).request(
        "POST", f"/v1/networks/{network_ref}/connect", {k: v for k, v in body.items() if v is not None}
    )
    click.echo(f"{ep['ifname']} {address(ep['ipv4'])} {address(ep['ipv6'])}".strip())


@cli.command()
@click.argument("network_ref")
@click.argument("sandbox")
@click.pass_context
def disconnect(ctx: click.Context, network_ref: str, sandbox: str) -> None:
    """Disconnect a sandbox from a network."""
    _client(ctx).request("POST", f"/v1/networks/{network_ref}/disconnect", {"sandbox": sandbox})


# --- sandboxes --------------------------------------------------------------------


@cli.group()
def sandbox() -> None:
    """Manage sandboxes (network namespaces of containers)."""


@sandbox.command("create")
@click.option("--id", "sid", help="sandbox id (a container id; default random)")
@click.option("--netns", help="an existing namespace path (/var/run/netns/NAME, /proc/PID/ns/net)")
@click.option("--hostname")
@click.option("--dns", multiple=True, help="DNS server for this sandbox (IP address; repeatable); default: the host's")
@click.option("--dns-search", multiple=True, help="DNS search domain (repeatable; '.' for none)")
@click.option("--dns-option", multiple=True, help="resolv.conf option: ndots:N, timeout:N, attempts:N, rotate, ...")
@click.pass_context
def sandbox_create(
    ctx: click.Context,
    sid: str | None,
    netns: str | None,
    hostname: str | None,
    dns: tuple[str, ...],
    dns_search: tuple[str, ...],
    dns_option: tuple[str, ...],
) -> None:
    """Create a sandbox: a new namespace, or an existing one."""
    body = {
        "id": sid,
        "netns": netns,
        "hostname": hostname,
        "dns": list(dns) or None,
        "dns_search": list(dns_search) or None,
        "dns_options": list(dns_option) or None,
    }
    sb = _client(ctx).request("POST", "/v1/sandboxes", {k: v for k, v in body.items() if v is not None})
    click.echo(sb["id"])


@sandbox.command("ls")
@list_options
@click.pass_context
def sandbox_ls(ctx: click.Context, as_json: bool, quiet: bool, filters: tuple[str, ...], fmt: str | None) -> None:
    """List sandboxes.

    Filters: id (a prefix), hostname (as docker: a part, or a regex: ^web$).  Template fields:
    .ID .Hostname .Netns .Endpoints .DNS .CreatedAt."""
    listing = Listing.check(SANDBOXES, filters, fmt, quiet, as_json)
    listing.print(_client(ctx).request("GET", "/v1/sandboxes"))


@sandbox.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def sandbox_rm(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Remove sandboxes (disconnecting their endpoints); tries them all."""
    _remove_each(ctx, "sandbox", refs, lambda r: f"/v1/sandboxes/{urllib.parse.quote(r, safe='')}")


# --- endpoints, nodes, agent ------------------------------------------------------


@cli.group()
def endpoint() -> None:
    """Inspect and remove endpoints."""


@endpoint.command("ls")
@click.option("--network", "network_ref", help="only this network's endpoints")
@list_options
@click.pass_context
def endpoint_ls(
    ctx: click.Context,
    network_ref: str | None,
    as_json: bool,
    quiet: bool,
    filters: tuple[str, ...],
    fmt: str | None,
) -> None:
    """List endpoints, with the network each is on.

    Filters: name (as docker: a part, or a regex: ^web$), id (a prefix), network (a name or id),
    sandbox (an id prefix), node.  Template fields: .ID .Name .Network
    .NetworkID .Sandbox .Interface .IPv4 .IPv6 .MAC .Ports .Aliases .Services .Node."""
    listing = Listing.check(endpoint_view({}), filters, fmt, quiet, as_json)
    url = "/v1/endpoints" + (f"?{urllib.parse.urlencode({'network': network_ref})}" if network_ref else "")
    eps = _client(ctx).request("GET", url)
    names = {} if as_json or quiet else _network_names(ctx)
    listing.print(eps, endpoint_view(names))


def _network_names(ctx: click.Context) -> dict[str, str]:
    """Network id -> name."""
    return {n["id"]: n["name"] for n in _client(ctx).request("GET", "/v1/networks")}


def _endpoint_url(ref: str, network_ref: str | None, **query: str) -> str:
    params = {**({"network": network_ref} if network_ref else {}), **query}
    tail = "?" + urllib.parse.urlencode(params) if params else ""
    return f"/v1/endpoints/{urllib.parse.quote(ref, safe='')}{tail}"


@endpoint.command("inspect")
@click.argument("refs", nargs=-1, required=True)
@click.option("--network", "network_ref", help="the network in which REF is a name")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def endpoint_inspect(ctx: click.Context, refs: tuple[str, ...], network_ref: str | None, as_json: bool) -> None:
    """Show endpoints in detail (REF: id, id prefix, or name)."""
    eps = fetch_each(_client(ctx), "endpoint", refs, lambda r: _endpoint_url(r, network_ref))
    if as_json:
        emit_json(eps)
    else:
        names = _network_names(ctx) if eps else {}
        for e in eps:
            print_endpoint(e, names.get(e["network_id"], "?"))
    raise_missing("endpoint", refs, eps)


@endpoint.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.option("--network", "network_ref", help="the network in which REF is a name")
@click.pass_context
def endpoint_rm(ctx: click.Context, refs: tuple[str, ...], network_ref: str | None) -> None:
    """Remove endpoints, freeing their names and addresses (a joined one leaves its sandbox first)."""
    _remove_each(ctx, "endpoint", refs, lambda r: _endpoint_url(r, network_ref, force="1"))


def _remove_each(ctx: click.Context, what: str, refs: tuple[str, ...], url: Callable[[str], str]) -> None:
    remove_each(_client(ctx), what, refs, url)


@cli.group()
def node() -> None:
    """Inspect cluster nodes; drain this one."""


@node.command("ls")
@list_options
@click.pass_context
def node_ls(ctx: click.Context, as_json: bool, quiet: bool, filters: tuple[str, ...], fmt: str | None) -> None:
    """List the cluster's nodes.

    Filters: name (as docker: a part, or a regex: ^web$), status (alive, failed, left, leaving).
    Template fields: .Name .Address .Status .VTEP .Tags; -q prints names."""
    listing = Listing.check(NODES, filters, fmt, quiet, as_json)
    listing.print(_client(ctx).request("GET", "/v1/nodes"))


@node.command("drain")
@click.pass_context
def node_drain(ctx: click.Context) -> None:
    """Take this host out of the cluster for good (decommissioning).

    The agent's Serf agent leaves the cluster and stops, then the agent
    stops; other hosts remove this host's overlay peers after their grace
    period.  Containers here keep their local networking.  A restart is not
    a drain: stopping the agent (SIGTERM) keeps the host in the cluster."""
    r = _client(ctx).request("POST", "/v1/node/drain", {})
    click.echo(f"{r.get('node', '')}: left the cluster; the agent is stopping")


@node.command("rm")
@click.argument("name")
@click.pass_context
def node_rm(ctx: click.Context, name: str) -> None:
    """Remove a host that is gone for good (run on another host).

    Refused while the host is alive.  A failed host is made to have left
    (its peers go everywhere), and the endpoints it left in the cluster
    store are deleted, so their addresses can be used elsewhere."""
    r = _client(ctx).request("DELETE", f"/v1/nodes/{urllib.parse.quote(name, safe='')}")
    click.echo(f"{r['node']}: removed, {len(r['endpoints_removed'])} endpoint(s) deleted")


@node.command("revoke")
@click.argument("name")
@click.pass_context
def node_revoke(ctx: click.Context, name: str) -> None:
    """Revoke a host's WireGuard key: every host drops it as a peer at once, so it
    reaches no one on encrypted overlays, whatever key it publishes next."""
    r = _client(ctx).request("POST", f"/v1/nodes/{urllib.parse.quote(name, safe='')}/revoke")
    click.echo(f"{r['node']}: revoked")


@node.command("unrevoke")
@click.argument("name")
@click.pass_context
def node_unrevoke(ctx: click.Context, name: str) -> None:
    """Take back a revocation (the host is re-admitted on purpose): its agent publishes its
    WireGuard key again by itself and every host takes it as a peer again.  Refused if the
    host is not revoked.  A host that should get a fresh key rotates it after this
    (``libnet network rotate-keys`` on that host)."""
    r = _client(ctx).request("DELETE", f"/v1/nodes/{urllib.parse.quote(name, safe='')}/revoke")
    click.echo(f"{r['node']}: no longer revoked")


@cli.group()
def agent() -> None:
    """Inspect the agent."""


@agent.command("status")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def agent_status(ctx: click.Context, as_json: bool) -> None:
    """Show whether the agent is healthy."""
    try:
        health = _client(ctx).request("GET", "/v1/health")
    except AgentError as exc:
        raise AgentError(f"the agent is not healthy: {exc.message}") from None
    if as_json:
        return emit_json(health)
    for line in status_lines(health):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def status_lines(health: dict[str, Any]) -> list[str]:
    """``agent status`` for people: one ``key: value`` line each, a section's (``encryption``) keys
    indented under it, lists joined, mappings as ``key=value`` (never a Python repr)."""

    def text(v: Any) -> str:
        if isinstance(v, dict):
            return "; ".join(f"{k}={text(x)}" for k, x in v.items()) or "-"
        if isinstance(v, list):
            return ", ".join(text(x) for x in v) or "-"
        return "-" if v is None else str(v)

    out = []
    for k, v in health.items():
        if isinstance(v, dict) and v:
            out.append(f"{k:>14}:")
            out += [f"{'':>16}{sk}: {text(sv)}" for sk, sv in v.items()]
        else:
            out.append(f"{k:>14}: {text(v)}")
    return out


@cli.group()
def cni() -> None:
    """The CNI plugins (libnet, libnet-ipam): thin clients of this agent."""


@cni.command("install")
@click.option("--bin-dir", required=True, help="the runtime's CNI bin dir (e.g. /opt/cni/bin)")
@click.option(
    "--python",
    type=click.Path(exists=True, dir_okay=False),
    help="the Python 3.9+ that runs the plugins (default: of this one and /usr/bin/python3, the one "
    "that starts faster here); they need only its standard library",
)
def cni_install(bin_dir: str, python: str | None) -> None:
    """Write the libnet and libnet-ipam plugin executables into BIN_DIR."""
    from libnet.cni.install import install

    for path in install(bin_dir, python):
        click.echo(path)


# --- commands of their own modules ---------------------------------------------------

network.add_command(network_prune)
sandbox.add_command(sandbox_inspect)
cli.add_command(version)
cli.add_command(topology)
cli.add_command(proxy)


def main() -> None:
    """The ``libnet`` command."""
    cli(prog_name="libnet")


if __name__ == "__main__":
    main()
