"""libnet-agent: wires the library, the cluster and the API together and runs them.

On start it checks the host (:mod:`agent.preflight`), takes the state dir's
and the socket's locks (one agent per state dir, :mod:`agent.locks`), checks
that the store is the one the kernel's state was made with
(:mod:`agent.storeguard`; ``--adopt``/``--purge`` for a lost store), then
reconciles (the data plane may have drifted while it was down) and serves the
API on its unix socket (mode 0660).  In cluster mode it
starts and supervises a Serf agent.  On SIGTERM or SIGINT it stops serving,
leaves the cluster gracefully and exits -- leaving bridges, veths and rules
in place, so containers keep working while the agent is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Sequence

from aiohttp import web

import libnet
from agent import config as agent_config
from agent import locks, logs, preflight, storeguard
from agent.api import AgentState, make_app
from agent.metrics import Metrics
from libnet.controller import Controller
from libnet.errors import LibnetError, Unavailable
from libnet.store import open_store

log = logging.getLogger("libnet.agent")


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
    controller: Controller | None = None
    serf = None
    runner = None
    reconciler = None
    serving = False
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
        controller = Controller(ctl_config, store=store)
        await controller.start()
        report = await controller.reconcile()
        log.info(
            "reconciled at start: %d removed, %d repaired, %d missing",
            len(report.removed),
            len(report.repaired),
            len(report.missing),
        )
        membership = None
        if config.cluster_mode:
            membership, serf = await _start_cluster(config)
            for driver in controller._drivers.values():
                if hasattr(driver, "attach_membership"):
                    driver.attach_membership(membership, config.peer_grace_period)
        metrics = Metrics()
        metrics.repairs(report)
        state = AgentState(controller, config.node_name, metrics, membership, config.advertise)
        runner = web.AppRunner(make_app(state), access_log=None)
        await runner.setup()
        os.makedirs(os.path.dirname(config.socket) or ".", exist_ok=True)
        site = web.UnixSite(runner, config.socket)
        serving = True
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
        reconciler = asyncio.create_task(_reconcile_periodically(controller, metrics, config.reconcile_interval))
        await stop.wait()
        log.info("stopping; the data plane stays in place")
    finally:
        if reconciler is not None:
            reconciler.cancel()
        if runner is not None:
            await runner.cleanup()
        if serf is not None:
            await serf.stop(leave=True)
        if controller is not None:
            await controller.close()
        await store.close()
        if serving:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(config.socket)


async def _start_cluster(config: agent_config.AgentConfig):
    from libnet.cluster.agent import SerfAgent, SerfAgentConfig
    from libnet.cluster.membership import SerfMembership

    serf = SerfAgent(
        SerfAgentConfig(
            node=config.node_name,
            bind=config.bind or config.advertise,
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
    return SerfMembership(client), serf


async def _reconcile_periodically(controller: Controller, metrics: Metrics, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
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
