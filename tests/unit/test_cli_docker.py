"""The ``libnet`` CLI for Docker users (issue 22, item 5): ``ls --filter/--format/-q``,
``network prune``, readable ``inspect``, ``endpoint ls`` with NETWORK, ``sandbox
inspect``, ``version``; against a real API on fakes (the ``served`` fixture)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from agent import cli_output
from agent.cli import cli
from agent.cli_views import NETWORKS


def _run(path: str, *args: str, stdin: str | None = None):
    return CliRunner().invoke(cli, ["--socket", path, *args], input=stdin)


@pytest.fixture
def nets(served):
    _, ctl, call = served
    call(ctl.create_network("web", ipv4_subnet="198.51.100.0/26", ipv6=False, labels={"env": "prod", "team": "a"}))
    call(ctl.create_network("web-test", ipv4_subnet="198.51.100.64/26", ipv6=False, labels={"env": "test"}))
    call(ctl.create_network("db", ipv4_subnet="198.51.100.128/26", ipv6=False))
    call(ctl.create_network("ov", driver="overlay", ipv4_subnet="198.51.100.192/26", ipv6=False))
    return served


def _names(output: str) -> list[str]:
    return output.split()


def test_filters_same_key_or_different_keys_and(nets) -> None:
    path, _, _ = nets
    fmt = ("--format", "{{.Name}}")
    assert _names(_run(path, "network", "ls", "-f", "name=web", *fmt).output) == ["web", "web-test"]
    r = _run(path, "network", "ls", "-f", "driver=bridge", "-f", "driver=overlay", *fmt)
    assert sorted(_names(r.output)) == ["db", "ov", "web", "web-test"]
    r = _run(path, "network", "ls", "-f", "name=web", "-f", "label=env=prod", *fmt)
    assert _names(r.output) == ["web"]
    r = _run(path, "network", "ls", "--filter", "label=env", "--filter", "scope=local", *fmt)
    assert _names(r.output) == ["web", "web-test"]
    assert _names(_run(path, "network", "ls", "-f", "scope=global", *fmt).output) == ["ov"]
    assert _names(_run(path, "network", "ls", "-f", "label=nope", *fmt).output) == []


def test_bad_filter_or_template_is_a_usage_error_naming_what_is_known(nets) -> None:
    path, _, _ = nets
    r = _run(path, "network", "ls", "-f", "colour=red")
    assert r.exit_code == 2 and "invalid filter 'colour'" in r.output and "driver" in r.output
    r = _run(path, "network", "ls", "-f", "driver")
    assert r.exit_code == 2 and "KEY=VALUE" in r.output
    r = _run(path, "network", "ls", "--format", "{{.Colour}}")
    assert r.exit_code == 2 and "no field '.Colour'" in r.output and ".Driver" in r.output
    r = _run(path, "network", "ls", "--format", "{{range .}}")
    assert r.exit_code == 2 and "unsupported template action" in r.output
    # checked before the agent is asked: an unreachable agent is not what is reported
    r = _run(path + ".gone", "network", "ls", "-f", "colour=red")
    assert r.exit_code == 2


def test_formats(nets) -> None:
    path, ctl, call = nets
    web = call(ctl.network("web"))
    r = _run(path, "network", "ls", "-f", "name=web", "--format", '{{.Name}}\\t{{.Driver}}\\t{{.Label "env"}}')
    lines = r.output.splitlines()
    assert lines[0].split() == ["web", "bridge", "prod"] and lines[1].split() == ["web-test", "bridge", "test"]
    assert len(lines[0].split("bridge")[0]) == len(lines[1].split("bridge")[0]), "tab columns are aligned"
    r = _run(path, "network", "ls", "-f", "name=db", "--format", "table {{.ID}}\\t{{.Name}}")
    assert r.output.splitlines()[0].split() == ["NETWORK", "ID", "NAME"]
    assert r.output.splitlines()[1].split() == [call(ctl.network("db")).id[:12], "db"]
    r = _run(path, "network", "ls", "-f", "name=web", "-f", "label=team", "--format", "json")
    [line] = r.output.splitlines()
    assert json.loads(line)["id"] == web.id and json.loads(line)["labels"] == {"env": "prod", "team": "a"}
    r = _run(path, "network", "ls", "-f", "name=db", "--format", "{{json .Labels}} {{upper .Name}} {{.Internal}}")
    assert r.output.strip() == "{} DB false"
    r = _run(path, "network", "ls", "--format", "table")
    assert "NETWORK ID" in r.output and "web-test" in r.output
    r = _run(path, "network", "ls", "-f", "name=web", "--json")
    assert [n["name"] for n in json.loads(r.output)] == ["web", "web-test"]
    r = _run(path, "network", "ls", "--json", "-q")
    assert r.exit_code == 2


def test_quiet_on_every_ls(nets) -> None:
    path, ctl, call = nets
    sb = call(ctl.create_sandbox("s1", hostname="app"))
    ep = call(ctl.connect("web", sb.id, name="app"))
    ids = {n.id[:12] for n in call(ctl.networks())}
    assert set(_run(path, "network", "ls", "-q").output.split()) == ids
    assert _run(path, "endpoint", "ls", "-q").output.split() == [ep.id[:12]]
    assert _run(path, "sandbox", "ls", "-q").output.split() == ["s1"]
    assert _run(path, "sandbox", "ls", "-q", "-f", "hostname=nope").output.split() == []


def test_endpoint_ls_has_a_network_column_and_filters(nets) -> None:
    path, ctl, call = nets
    s1, s2 = call(ctl.create_sandbox("s1")), call(ctl.create_sandbox("s2"))
    call(ctl.connect("web", s1.id, name="one"))
    call(ctl.connect("db", s2.id, name="two"))
    r = _run(path, "endpoint", "ls")
    assert r.exit_code == 0, r.output
    header, *rows = r.output.splitlines()
    assert "NETWORK" in header.split()
    assert {tuple(row.split()[1:3]) for row in rows} == {("one", "web"), ("two", "db")}
    r = _run(path, "endpoint", "ls", "-f", "network=db", "--format", "{{.Name}} {{.Network}} {{.IPv4}}")
    assert r.output.strip() == "two db 198.51.100.130"
    r = _run(path, "endpoint", "ls", "-f", "sandbox=s1", "-f", "sandbox=s2", "--format", "{{.Name}}")
    assert sorted(r.output.split()) == ["one", "two"]


def test_network_prune(nets) -> None:
    path, ctl, call = nets
    sb = call(ctl.create_sandbox("s1"))
    call(ctl.connect("web", sb.id))
    r = _run(path, "network", "prune", stdin="n\n")
    assert r.exit_code == 0 and "Are you sure" in r.output
    assert len(call(ctl.networks())) == 4, "declined: nothing removed"
    r = _run(path, "network", "prune", "--filter", "label=env", stdin="y\n")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-2:] == ["Deleted Networks:", "web-test"]
    r = _run(path, "network", "prune", "-f")
    assert r.exit_code == 0 and "Are you sure" not in r.output
    assert sorted(r.output.splitlines()[1:]) == ["db", "ov"]
    assert [n.name for n in call(ctl.networks())] == ["web"]
    r = _run(path, "network", "prune", "-f")
    assert r.exit_code == 0 and r.output == ""


def test_network_inspect_is_readable(nets) -> None:
    path, ctl, call = nets
    sb = call(ctl.create_sandbox("s1"))
    port = {"host_port": 8080, "container_port": 80, "protocol": "tcp"}
    call(ctl.connect("web", sb.id, name="app", aliases=["www"], services=["http:80/tcp"], ports=[port]))
    r = _run(path, "network", "inspect", "web")
    assert r.exit_code == 0, r.output
    out = r.output
    assert "env=prod, team=a" in out and "www" in out and "http:80/tcp" in out and "8080->80/tcp" in out
    assert "{" not in out and "[" not in out and "'" not in out, "no Python reprs"
    r = _run(path, "endpoint", "inspect", "app")
    assert "www" in r.output and "8080->80/tcp" in r.output and "network:" in r.output and "web" in r.output
    assert "[" not in r.output and "{" not in r.output


def test_sandbox_inspect(nets) -> None:
    path, ctl, call = nets
    sb = call(ctl.create_sandbox("s1", hostname="app", dns=["198.51.100.53"]))
    call(ctl.connect("web", sb.id, name="app", aliases=["www"]))
    call(ctl.connect("db", sb.id, name="app"))
    r = _run(path, "sandbox", "inspect", "s1")
    assert r.exit_code == 0, r.output
    assert "app" in r.output and "198.51.100.53" in r.output and "www" in r.output
    rows = [line.split() for line in r.output.splitlines() if line.split()[:1] in (["web"], ["db"])]
    assert [row[:3] for row in rows] == [["web", "app", "eth0"], ["db", "app", "eth1"]]
    [doc] = json.loads(_run(path, "sandbox", "inspect", "s1", "--json").output)
    assert [e["name"] for e in doc["endpoints"]] == ["app", "app"] and doc["hostname"] == "app"
    r = _run(path, "sandbox", "inspect", "nope")
    assert r.exit_code == 1 and "no such sandbox" in r.output.lower()


def test_version(served) -> None:
    path, _, _ = served
    r = _run(path, "version", "--json")
    doc = json.loads(r.output)
    assert doc["client"]["api"] == "v1" and doc["agent"]["api"] == "v1" and doc["agent"]["node"] == "n"
    assert doc["client"]["version"] == doc["agent"]["version"]
    r = _run(path, "version")
    assert "Client:" in r.output and "Agent:" in r.output
    r = _run(path + ".gone", "version")
    assert r.exit_code == 3 and "Client:" in r.output and "Agent:" not in r.output


def test_template_engine_alone() -> None:
    render = cli_output.compile_template(NETWORKS, "{{ .Name }}-{{lower .Driver}}{{json .}}")
    assert render({"name": "a", "driver": "BR", "id": "x"}) == 'a-br{"name": "a", "driver": "BR", "id": "x"}'
    with pytest.raises(Exception, match="unclosed"):
        cli_output.compile_template(NETWORKS, "{{.Name")


def test_slow_status_shows_nothing_off_a_terminal(capsys) -> None:
    with cli_output.slow_status("GET /v1/networks", after=0.0):
        pass
    assert capsys.readouterr().err == ""


def test_slow_status_spins_on_a_terminal_after_the_delay(monkeypatch) -> None:
    import io
    import time

    from rich.console import Console

    out = io.StringIO()
    monkeypatch.setattr(cli_output, "err_console", Console(file=out, force_terminal=True))
    with cli_output.slow_status("GET /v1/networks", after=0.05):
        time.sleep(0.4)
    assert "waiting for the agent: GET /v1/networks" in out.getvalue()
    quick = io.StringIO()
    monkeypatch.setattr(cli_output, "err_console", Console(file=quick, force_terminal=True))
    with cli_output.slow_status("GET /v1/networks", after=5):
        pass
    assert "waiting" not in quick.getvalue()


def test_node_ls_quiet_filter_format(served) -> None:
    path, _, _ = served
    assert _run(path, "node", "ls", "-q").output.split() == ["n"]
    assert _run(path, "node", "ls", "-q", "-f", "status=failed").output.split() == []
    assert _run(path, "node", "ls", "--format", "{{.Name}}:{{.Status}}").output.strip() == "n:alive"
    assert json.loads(_run(path, "node", "ls", "--json").output)[0]["name"] == "n"


def test_a_slow_request_shows_the_spinner_on_a_terminal(tmp_path, monkeypatch) -> None:
    """The CLI wires the spinner into every request: an agent answering after 1.3 s."""
    import io
    import socket
    import threading
    import time

    from rich.console import Console

    path = str(tmp_path / "slow.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            time.sleep(1.3)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    out = io.StringIO()
    monkeypatch.setattr(cli_output, "err_console", Console(file=out, force_terminal=True))
    try:
        r = _run(path, "network", "ls", "-q")
    finally:
        thread.join(10)
        server.close()
    assert r.exit_code == 0, r.output
    assert "waiting for the agent: GET /v1/networks" in out.getvalue()


def test_default_table_is_plain_aligned_text_like_docker(nets) -> None:
    """The default ``ls`` table: a header, a line per object, columns aligned and three
    spaces apart, as docker prints (rich is not used for lists: issue 22, CLI start time)."""
    path, _, _ = nets
    lines = _run(path, "network", "ls").output.splitlines()
    header = lines[0]
    assert header.split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE", "IPV4", "IPV6", "INTERNAL"]
    assert header.startswith("NETWORK ID     NAME   ")  # 12-character ids, then three spaces
    name_col, driver_col = header.index("NAME"), header.index("DRIVER")
    assert {line[name_col:driver_col].rstrip() for line in lines[1:]} == {"web", "web-test", "db", "ov"}
    assert all(line == line.rstrip() for line in lines)


def test_unreachable_agent_says_why(tmp_path) -> None:
    gone = _run(str(tmp_path / "none.sock"), "network", "ls")
    assert (
        gone.exit_code == 3
        and "cannot reach the libnet agent" in gone.output
        and "Is libnet-agent running" in gone.output
    )
    import socket

    path = str(tmp_path / "closed.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)  # bound, never listening: refused
        refused = _run(path, "network", "ls")
    assert refused.exit_code == 3 and "cannot reach the libnet agent" in refused.output


def test_client_is_shared_by_threads_and_never_resends(served, tmp_path) -> None:
    """The agent client (on the CNI plugin's transport since issue 22) opens a connection
    per request: threads may share one Client, and a request whose answer never came is
    reported, not sent again (a POST could otherwise run twice)."""
    import socket
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from agent.client import Client, Unreachable

    path, ctl, call = served
    call(ctl.create_network("web", ipv4_subnet="198.51.100.0/26", ipv6=False))
    client = Client(path, timeout=10)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.request("GET", "/v1/networks"), range(32)))
    assert all([n["name"] for n in a] == ["web"] for a in answers)

    mute = str(tmp_path / "mute.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(mute)
    server.listen(4)
    seen: list[bytes] = []

    def hang_up() -> None:
        server.settimeout(5)
        for _ in range(2):
            try:
                conn, _ = server.accept()
            except TimeoutError:
                return
            with conn:
                seen.append(conn.recv(65536))  # read the request, close without an answer

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    with pytest.raises(Unreachable):
        Client(mute, timeout=5).request("POST", "/v1/sandboxes", {})
    thread.join(10)
    server.close()
    assert len(seen) == 1 and seen[0].startswith(b"POST /v1/sandboxes ")


def test_inspect_prints_labels_as_text_not_rich_markup(nets) -> None:
    """A label is the user's text: ``[/]`` once made rich raise MarkupError (a traceback)
    and ``[red]r[/red]`` was drawn as a red ``r``; options print as JSON would (no None/True)."""
    path, ctl, call = nets
    call(
        ctl.create_network(
            "mk", ipv4_subnet="198.51.100.248/29", ipv6=False, labels={"x": "[/]", "y": "[red]r[/red]", "z": "a" * 300}
        )
    )
    r = _run(path, "network", "inspect", "mk")
    assert r.exit_code == 0, r.output
    assert "x=[/], y=[red]r[/red], z=" + "a" * 300 in r.output, "labels verbatim, on one line (not wrapped)"
    assert "options:       -" in r.output


def test_inspect_options_without_python_reprs() -> None:
    from agent import cli_views

    assert cli_views._pairs({"icc": True, "mtu": None, "bridge_name": "br0", "off": False}) == (
        "bridge_name=br0, icc=true, off=false"
    )
    assert cli_views._pairs({"mtu": None}) == "-"


def test_inspect_prints_the_found_ones_and_exits_1_for_the_others(nets) -> None:
    """As ``docker network inspect good bad``: the good one is printed, the bad one is an
    error on stderr, exit 1 (the good one was not printed at all)."""
    path, ctl, call = nets
    sb = call(ctl.create_sandbox("s1", hostname="app"))
    call(ctl.connect("web", sb.id, name="app"))
    r = _run(path, "network", "inspect", "web", "nosuch", "db")
    assert r.exit_code == 1
    assert "web " in r.output and "db " in r.output and "nosuch" in r.output
    r = _run(path, "network", "inspect", "--json", "nosuch", "web")
    assert r.exit_code == 1 and "no such network" in r.output
    assert [n["name"] for n in json.loads(r.stdout)] == ["web"]
    r = _run(path, "sandbox", "inspect", "nosuch", "s1")
    assert r.exit_code == 1 and "app s1" in r.stdout and "nosuch" in r.output
    r = _run(path, "endpoint", "inspect", "app", "nosuch", "--network", "web")
    assert r.exit_code == 1 and r.stdout.startswith("app ") and "nosuch" in r.output
    r = _run(path, "network", "inspect", "nosuch")
    assert r.exit_code == 1 and r.stdout == "" and "no such network" in r.output


def test_a_template_over_no_objects_prints_nothing(nets) -> None:
    """``ls -f name=none --format '{{.Name}}' | wc -l`` is 0, as with docker (was one empty line)."""
    path, _, _ = nets
    r = _run(path, "network", "ls", "-f", "name=none", "--format", "{{.Name}}")
    assert r.exit_code == 0 and r.output == ""
    r = _run(path, "network", "ls", "-f", "name=none", "--format", "{{.Name}}\\t{{.Driver}}")
    assert r.output == ""
    r = _run(path, "network", "ls", "-f", "name=none", "--format", "table {{.Name}}")
    assert r.output == "NAME\n", "a table keeps its header"


def test_name_filter_is_a_regular_expression_like_docker(nets) -> None:
    """Docker's ``name=`` is an exact name or a regular expression searched in it: scripts
    write ``-f name=^web$`` for exactly ``web`` (it matched nothing)."""
    path, _, _ = nets
    fmt = ("--format", "{{.Name}}")
    assert _names(_run(path, "network", "ls", "-f", "name=^web$", *fmt).output) == ["web"]
    assert _names(_run(path, "network", "ls", "-f", "name=^w.b-", *fmt).output) == ["web-test"]
    assert _names(_run(path, "network", "ls", "-f", "name=web", *fmt).output) == ["web", "web-test"]
    r = _run(path, "network", "ls", "-f", "name=(", *fmt)
    assert r.exit_code == 0 and r.output == "", "an invalid expression matches nothing (docker)"


def test_version_labels_like_docker_and_a_version_flag(served) -> None:
    """``libnet version`` labels its lines as ``docker version`` does (was "Api:", "Os arch:");
    ``libnet --version`` prints one line, as ``docker --version``, without the agent."""
    path, _, _ = served
    r = _run(path, "version")
    assert r.exit_code == 0, r.output
    labels = [line.split(":")[0].strip() for line in r.output.splitlines() if line.startswith(" ")]
    assert {"Version", "API version", "Python version", "OS/Arch", "Node"} <= set(labels), labels
    assert "Api" not in labels and "Os arch" not in labels
    import libnet

    r = CliRunner().invoke(cli, ["--socket", path + ".gone", "--version"])
    assert r.exit_code == 0 and r.output == f"libnet version {libnet.__version__}\n"


def test_permission_denied_says_the_sockets_real_mode_and_owner(tmp_path) -> None:
    """The message named "mode 0660" whatever the socket's mode (a --socket pointing at
    another file, or a directory on the path that is not searchable)."""
    import os

    from agent.client import _unreachable

    sock = tmp_path / "other.sock"
    sock.write_text("")
    os.chmod(sock, 0o640)
    msg = _unreachable(str(sock), PermissionError(13, "Permission denied")).message
    import grp
    import pwd

    owner = f"{pwd.getpwuid(os.getuid()).pw_name}:{grp.getgrgid(os.getgid()).gr_name}"
    assert f"owner {owner}, mode 0640" in msg and "0660" not in msg, msg
    hidden = tmp_path / "closed" / "libnet.sock"
    msg = _unreachable(str(hidden), PermissionError(13, "Permission denied")).message
    assert "permission denied" in msg and "0660" not in msg


def test_closing_braces_outside_an_action_are_text_as_in_go_templates() -> None:
    """Go's text/template prints a ``}}`` outside an action as it is (it said "an unclosed {{")."""
    render = cli_output.compile_template(NETWORKS, "{{.Name}}}} {x}")
    assert render({"name": "a"}) == "a}} {x}"
    with pytest.raises(Exception, match="unclosed"):
        cli_output.compile_template(NETWORKS, "{{.Name}} {{.Driver")


def test_network_inspect_format_like_docker(nets) -> None:
    """``docker network inspect -f '{{.Id}}' NET`` has a libnet twin (it was "No such option")."""
    path, ctl, call = nets
    sb = call(ctl.create_sandbox("s1"))
    call(ctl.connect("web", sb.id, name="app"))
    web, db = call(ctl.network("web")), call(ctl.network("db"))
    r = _run(path, "network", "inspect", "-f", '{{.Id}} {{.Name}} {{.Label "env"}} {{.Endpoints}}', "web", "db")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [f"{web.id} web prod app", f"{db.id} db  "]
    r = _run(path, "network", "inspect", "--format", "json", "db")
    assert [n["id"] for n in json.loads(r.output)] == [db.id]
    r = _run(path + ".gone", "network", "inspect", "-f", "{{.Nope}}", "web")
    assert r.exit_code == 2 and "no field '.Nope'" in r.output, "checked before the agent is asked"


def test_template_mappings_and_lists_without_python_reprs() -> None:
    """``{{.Options}}`` printed ``bridge_name=None,icc=True,mtu=None`` (the bridge's options)."""
    render = cli_output.compile_template(NETWORKS, "{{.Options}}|{{.Labels}}")
    net = {"options": {"bridge_name": None, "icc": True, "mtu": 1400}, "labels": {"on": False}}
    assert render(net) == "icc=true,mtu=1400|on=false"


def test_error_lines_are_not_wrapped_and_carry_no_python_reprs(nets) -> None:
    """``network rm web nosuch`` off a terminal: each refusal is one line with its ids
    (rich wrapped it at 80 columns, and the ids read ``endpoints=['…']``)."""
    path, ctl, call = nets
    sb = call(ctl.create_sandbox("s1"))
    ep = call(ctl.connect("web", sb.id, name="app"))
    r = _run(path, "network", "rm", "web", "nosuch")
    assert r.exit_code == 1
    [line] = [x for x in r.stderr.splitlines() if x.startswith("libnet: network web:")]
    assert "disconnect them first" in line and f"endpoints={ep.id})" in line, line
    assert "['" not in r.stderr
