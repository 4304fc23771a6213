"""libnet-agent: wires the library, the cluster and the API together and runs them.

On start it checks the host (:mod:`agent.preflight`), takes the state dir's
and the socket's locks (one agent per state dir, :mod:`agent.locks`), checks
that the store is the one the kernel's state was made with
(:mod:`agent.storeguard`; ``--adopt``/``--purge`` for a lost store), then
reconciles (the data plane may have drifted while it was down) and serves the
API on its unix socket (mode 0660).

In cluster mode it re-attaches to the Serf agent a previous run left (or
starts one) and supervises it; the Serf agent outlives libnet-agent, so a
restart, a crash or an upgrade of libnet-agent is no membership event and
other hosts keep this host's peers (DESIGN.md, "Liveness").  The cluster
store is wrapped in a :class:`~libnet.store.mirror.MirroredStore`: when it
cannot be reached the agent starts (or keeps running) degraded from its last
known state -- no reconcile, the kernel as it is, reads from the local copy,
writes that need the cluster store answered 503 -- and reconciles when the
store is back.

On SIGTERM or SIGINT (a graceful stop) it refuses new operations, waits up to
:data:`STOP_WAIT` seconds for those in flight, stops serving and exits 0 --
leaving bridges, veths, rules, the WireGuard interfaces of encrypted overlays
and the Serf agent in place, so containers keep working while the agent is
down.  Only with ``--leave`` (or after ``libnet node drain``) does it leave the
cluster and stop the Serf agent and the WireGuard interfaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

import libnet
from agent import config as agent_config
from agent import locks, logs, preflight, storeguard
from agent.aioweb import web
from agent.api import AgentState, make_app, overlay_hook
from agent.malloc import IdleTrim, freeze_startup
from agent.metrics import Metrics
from libnet.controller import Controller
from libnet.errors import BadRequest, LibnetError, Unavailable
from libnet.store import open_store
from libnet.store.mirror import MirroredStore

if TYPE_CHECKING:
    from libnet.cluster.agent import SerfAgent
    from libnet.cluster.serf_membership import SerfMembership

CLUSTER_COPY = "cluster-copy.json"  # the local copy of the cluster store (degraded mode)

log = logging.getLogger("libnet.agent")
STOP_WAIT = 20.0  # seconds a graceful stop waits for operations in flight


def _socket_in_use(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
        return True


async def run(config: agent_config.AgentConfig, stop: asyncio.Event | None = None, check_host: bool = True) -> None:
    """Run the agent until ``stop`` is set (or SIGTERM/SIGINT).

    Before anything changes: the host checks (:mod:`agent.preflight`, unless
    ``check_host`` is false), then the state dir's and the socket's locks
    (:mod:`agent.locks`: one agent per state dir and per socket), then the
    store guard (:mod:`agent.storeguard`: no start on a lost store while the
    instance owns kernel objects; ``--adopt``/``--purge``).  Only then
    reconcile and serve."""
    if check_host:
        preflight.check_host(config.ipv6)
    with locks.state_lock(config.state_dir), locks.socket_lock(config.socket):
        await _run(config, stop or asyncio.Event())


async def _run(config: agent_config.AgentConfig, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if os.path.exists(config.socket):
        if _socket_in_use(config.socket):
            raise Unavailable(
                f"another process is serving {config.socket} (an agent of an older version?); stop it, or give "
                "this agent its own --socket",
                socket=config.socket,
            )
        os.unlink(config.socket)  # left by an agent that died (we hold the socket's lock)

    ctl_config = config.controller_config().resolved()
    assert ctl_config.instance_id is not None
    store = open_store(ctl_config.store)
    cluster: MirroredStore | None = None
    controller: Controller | None = None
    serf = None
    runner = None
    plugin_runner = None
    reconciler = None
    trimmer = None
    catching_up: set[asyncio.Task[None]] = set()
    serving = False
    leave = config.leave
    try:
        await storeguard.check(
            store,
            ctl_config.store,
            ctl_config.state_dir,
            ctl_config.instance_id,
            config.node_name,
            ctl_config.host_netns,
            adopt=config.adopt,
            purge=config.purge,
        )
        if ctl_config.cluster_store:
            cluster = MirroredStore(
                open_store(ctl_config.cluster_store), os.path.join(ctl_config.state_dir, CLUSTER_COPY)
            )
            await cluster.probe()
        controller = Controller(ctl_config, store=store, cluster_store=cluster)
        await controller.start()
        metrics = Metrics()
        if cluster is not None and cluster.degraded:
            log.warning(
                "starting degraded: the cluster store %s is unreachable; the data plane stays as it is, "
                "no reconcile until the store is back",
                cluster.url,
            )
        else:
            report = await controller.reconcile()
            metrics.repairs(report)
            log.info(
                "reconciled at start: %d removed, %d repaired, %d missing",
                len(report.removed),
                len(report.repaired),
                len(report.missing),
            )
        if cluster is not None:
            cluster.on_recovered(lambda: _catch_up(controller, metrics, catching_up))
        membership = None
        if config.cluster_mode:
            membership, serf = await _start_cluster(config)
            for driver in controller.drivers.cluster_aware():
                driver.attach_membership(membership, ctl_config.peer_grace_period)

        async def drain() -> None:
            """``libnet node drain``: leave the cluster for good, stop the Serf agent, then stop."""
            nonlocal leave
            if serf is None:
                raise BadRequest("this agent is not in cluster mode: there is no cluster to leave")
            leave = True
            log.warning("draining: leaving the cluster; other hosts remove this host's peers after their grace period")
            await serf.stop(leave=True)
            asyncio.get_running_loop().call_later(0.2, stop.set)  # after the answer went out

        state = AgentState(controller, config.node_name, metrics, membership, config.advertise)
        state.cluster_store = cluster
        state.serf = serf
        state.drain = drain
        runner = web.AppRunner(make_app(state), access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        os.makedirs(os.path.dirname(config.socket) or ".", exist_ok=True)
        site = web.UnixSite(runner, config.socket)
        serving = True
        freeze_startup()  # before the first request: no full collection scans start-up's objects
        await site.start()
        os.chmod(config.socket, 0o660)
        log.info(
            "libnet-agent %s serving on %s (node %s, instance %s%s)",
            libnet.__version__,
            config.socket,
            config.node_name,
            ctl_config.instance_id,
            ", cluster mode" if membership else "",
        )
        if config.docker_plugin_socket:
            plugin_runner = await _serve_docker_plugin(
                controller, config.docker_plugin_socket, config.docker_host, config.docker_sync_interval
            )
        reconciler = asyncio.create_task(
            _reconcile_periodically(controller, metrics, config.reconcile_interval, cluster)
        )
        trimmer = asyncio.create_task(IdleTrim().run(), name="idle-trim")  # RSS back after bursts
        await stop.wait()
        log.info("stopping; the data plane stays in place")
        if not await controller.quiesce(STOP_WAIT):
            log.warning("operations still in flight after %gs; stopping anyway", STOP_WAIT)
    finally:
        for task in [reconciler, trimmer, *catching_up]:
            if task is not None:
                task.cancel()
        if plugin_runner is not None:
            await plugin_runner.cleanup()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(config.docker_plugin_socket)
        if runner is not None:
            await runner.cleanup()
        if controller is not None:
            if leave and (stop_tunnel := overlay_hook(controller, "stop_tunnel")) is not None:
                await stop_tunnel()  # leaving for good: its WireGuard interfaces go too
            await controller.close()  # before the Serf client goes: the overlay driver listens to it
        if serf is not None:
            if leave:
                log.info("leaving the cluster and stopping the serf agent")
                await serf.stop(leave=True)
            else:
                await serf.detach()  # it keeps this host in the cluster; the next start re-attaches
        if cluster is not None:
            await cluster.close()
        await store.close()
        if serving:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(config.socket)


async def _serve_docker_plugin(
    controller: Controller, path: str, docker_host: str = "", sync_interval: float = 30.0
) -> web.AppRunner | None:
    """Serve Docker's network and IPAM plugin protocols on ``path`` (:mod:`agent.docker_plugin`).
    A socket another live process serves is left alone (warned about): the agent runs without it."""
    from agent.docker_plugin import make_plugin_app

    if os.path.exists(path):
        if _socket_in_use(path):
            log.warning("docker plugin socket %s is served by another process; the docker plugin is off", path)
            return None
        os.unlink(path)
    app = make_plugin_app(controller, docker_host=docker_host, sync_interval=sync_interval)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    await web.UnixSite(runner, path).start()
    os.chmod(path, 0o660)
    log.info("docker network and IPAM plugin (driver libnet) serving on %s", path)
    return runner


async def _start_cluster(config: agent_config.AgentConfig) -> tuple[SerfMembership, SerfAgent]:
    from libnet.cluster.agent import SerfAgent, SerfAgentConfig
    from libnet.cluster.serf_membership import SerfMembership

    bind = config.bind or config.advertise
    if bind is None:  # AgentConfig.validate refuses cluster mode without --advertise
        raise BadRequest("cluster mode needs --advertise ADDRESS (this host's address for gossip and VXLAN)")
    serf = SerfAgent(
        SerfAgentConfig(
            node=config.node_name,
            bind=bind,
            port=config.serf_port,
            advertise=config.advertise,
            encrypt_key=config.cluster_key,
            tags={"vtep": config.advertise or "", "libnet": libnet.__version__},
            join=list(config.join),
            profile=config.serf_profile,
            state_dir=os.path.join(config.state_dir, "serf"),
        )
    )
    client = await serf.start()
    log.info("serf agent %s (pid %s): %s", config.node_name, serf.pid, serf.how)
    return SerfMembership(client), serf


def _catch_up(controller: Controller, metrics: Metrics, tasks: set[asyncio.Task[None]]) -> None:
    """The cluster store is back: read everything again and repair (a reconcile)."""

    async def run() -> None:
        try:
            report = await controller.reconcile()
            metrics.repairs(report)
            log.info(
                "caught up with the cluster store: %d removed, %d repaired, %d missing",
                len(report.removed),
                len(report.repaired),
                len(report.missing),
            )
        except LibnetError as exc:
            log.warning("catching up with the cluster store failed (the next periodic reconcile retries): %s", exc)

    task = asyncio.get_running_loop().create_task(run())
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _reconcile_periodically(
    controller: Controller, metrics: Metrics, interval: float, cluster: MirroredStore | None = None
) -> None:
    while True:
        await asyncio.sleep(interval)
        if cluster is not None and cluster.degraded:
            continue  # the kernel stays as it is until the cluster store is back
        try:
            metrics.repairs(await controller.reconcile())
        except LibnetError as exc:
            log.warning("periodic reconcile failed: %s", exc)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``libnet-agent`` command."""
    import sys

    try:
        config = agent_config.load(list(sys.argv[1:] if argv is None else argv), agent_config.default_env())
    except LibnetError as exc:
        print(f"libnet-agent: {exc.message}", file=sys.stderr)
        return 2
    logs.setup(config.log_format, config.log_level)
    from agent.malloc import limit_arenas

    limit_arenas(2)  # before any worker thread: their arenas kept ~1 MiB of RSS (issue 22)
    from libnet.kernel.fds import raise_nofile_limit

    raise_nofile_limit()  # a socket per sandbox and more: not the shell's 1024 (libnet.kernel.fds)
    try:
        asyncio.run(run(config))
    except LibnetError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # one line for the operator; the traceback only at debug level
        log.error("libnet-agent stopped: %s: %s", type(exc).__name__, exc)
        log.debug("traceback", exc_info=True)
        return 1
    return 0
