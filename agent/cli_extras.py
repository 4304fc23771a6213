"""``libnet`` commands Docker users expect: ``network prune``, ``sandbox
inspect`` and ``version`` (registered on the groups of :mod:`agent.cli`)."""

from __future__ import annotations

import platform
import sys
import urllib.parse
from typing import Any

import click

from agent.cli_output import console, emit_json, fetch_each, parse_filters, raise_missing, select
from agent.cli_views import NETWORKS, print_sandbox
from agent.client import AgentError, Client, Unreachable

#: the API version this client speaks (the agent's ``/v1/version`` says its own)
API_VERSION = "v1"

#: ``libnet version``'s labels, as ``docker version`` writes them (other keys: capitalized)
VERSION_LABELS = {"api": "API version", "python": "Python version", "os_arch": "OS/Arch"}


def _client(ctx: click.Context) -> Client:
    client: Client = ctx.obj
    return client


@click.command("prune")
@click.option("-f", "--force", is_flag=True, help="do not ask for confirmation")
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="only networks that match (name, id, driver, scope, label; as in network ls)",
)
@click.pass_context
def network_prune(ctx: click.Context, force: bool, filters: tuple[str, ...]) -> None:
    """Remove every network without endpoints (on any host), printing the removed names.

    Asks first unless -f.  A network that gains an endpoint meanwhile is
    refused by the agent and kept (reported; exit 1)."""
    chosen_filters = parse_filters(filters, NETWORKS.filters)
    if not force and not click.confirm(
        "WARNING! This will remove all libnet networks without endpoints"
        + (f" matching {', '.join(filters)}" if filters else "")
        + ".\nAre you sure you want to continue?",
        default=False,
        err=True,
    ):
        return
    client = _client(ctx)
    used = {e["network_id"] for e in client.request("GET", "/v1/endpoints")}
    nets = select(client.request("GET", "/v1/networks"), chosen_filters, NETWORKS.filters)
    removed, kept = [], []
    for n in nets:
        if n["id"] in used:
            continue
        try:
            client.request("DELETE", f"/v1/networks/{urllib.parse.quote(n['id'], safe='')}")
        except AgentError as exc:
            click.echo(f"libnet: network {n['name']}: {exc.message}", err=True)
            kept.append(n["name"])
            continue
        removed.append(n["name"])
    if removed:
        click.echo("Deleted Networks:")
        click.echo("\n".join(removed))
    if kept:
        raise AgentError(f"{len(kept)} network(s) not removed: {', '.join(kept)}")


@click.command("inspect")
@click.argument("refs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON (each sandbox with its endpoints)")
@click.pass_context
def sandbox_inspect(ctx: click.Context, refs: tuple[str, ...], as_json: bool) -> None:
    """Show sandboxes in detail: namespace, DNS settings, and their endpoints
    (network, interface, addresses, aliases, ports)."""
    client = _client(ctx)
    sbs = fetch_each(client, "sandbox", refs, lambda r: f"/v1/sandboxes/{urllib.parse.quote(r, safe='')}")
    by_id = {e["id"]: e for e in client.request("GET", "/v1/endpoints")} if sbs else {}
    joined = [[by_id[i] for i in s.get("endpoints") or [] if i in by_id] for s in sbs]
    if as_json:
        emit_json([{**s, "endpoints": eps} for s, eps in zip(sbs, joined, strict=True)])
    elif sbs:
        names = {n["id"]: n["name"] for n in client.request("GET", "/v1/networks")}
        for s, eps in zip(sbs, joined, strict=True):
            print_sandbox(s, eps, names)
    raise_missing("sandbox", refs, sbs)


def _client_version() -> dict[str, str]:
    import libnet

    return {
        "version": libnet.__version__,
        "api": API_VERSION,
        "python": platform.python_version(),
        "os_arch": f"{sys.platform}/{platform.machine()}",
    }


@click.command("version")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def version(ctx: click.Context, as_json: bool) -> None:
    """Show the client's and the agent's versions and API versions.

    The client's part is printed also when the agent cannot be reached (then
    exit 3)."""
    out: dict[str, Any] = {"client": _client_version()}
    failure: click.ClickException | None = None
    try:
        out["agent"] = _client(ctx).request("GET", "/v1/version")
    except (Unreachable, AgentError) as exc:
        failure = exc
    if as_json:
        emit_json(out)
    else:
        for part in ("client", "agent"):
            if part in out:
                console.print(f"[bold]{part.capitalize()}:[/]", highlight=False)
                for k, v in out[part].items():
                    label = VERSION_LABELS.get(k) or k.replace("_", " ").capitalize()
                    console.print(f"  {label + ':':<16} {v}", highlight=False, markup=False, soft_wrap=True)
    if failure is not None:
        raise failure
