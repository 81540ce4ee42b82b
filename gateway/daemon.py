"""Builds the gateway's components from config, starts and stops them in order, handles
signals and tells systemd how it is doing."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import logging.handlers
import os
import signal
import ssl
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .auth.default_policies import ALLOW_ALL_NAME
from .config import GatewayConfig
from .mqtt.broker import Broker
from .mqtt.store import BrokerStore
from .state_dir import BROKER_DB, StateLock, ensure_state_dir, write_status
from .systemd_notify import notify, watchdog_interval

if TYPE_CHECKING:
    from .auth.discovery import DiscoveryServer
    from .auth.service import DeviceAuth
    from .cloud.bridge import CloudBridge
    from .deployment.agent import DeploymentAgent
    from .deployment.boot import Boot
    from .deployment.jobs import JobsAgent
    from .functions.executor import FunctionExecutor
    from .shadow.service import ShadowService
    from .shadow.sync import ShadowSync

log = logging.getLogger("lichen.daemon")

STATUS_INTERVAL = 2.0


def external_tls_context(cfg: GatewayConfig) -> ssl.SSLContext:
    """TLS from operator-supplied files: any client certificate chaining to tls_ca_file."""
    lst = cfg.listeners
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(lst.tls_cert_file, lst.tls_key_file)
    ctx.load_verify_locations(lst.tls_ca_file)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class Gateway:
    """Everything that runs in the gateway process."""

    def __init__(self, cfg: GatewayConfig, state_dir: Path, boot: Boot | None = None) -> None:
        """boot: the deployed version it starts on; None (started with --config) refuses
        deployments."""
        self.cfg = cfg
        self.boot = boot
        self.deployments: DeploymentAgent | None = None
        self.jobs: JobsAgent | None = None
        self.state_dir = state_dir
        self.lock = StateLock(state_dir)
        self.broker: Broker | None = None
        self.auth: DeviceAuth | None = None
        self.discovery: DiscoveryServer | None = None
        self.shadow: ShadowService | None = None
        self.shadow_sync: ShadowSync | None = None
        self.functions: FunctionExecutor | None = None
        self.cloud: CloudBridge | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        ensure_state_dir(self.state_dir)
        self.lock.acquire()
        store = None
        if self.cfg.persistence.enabled:
            store = BrokerStore(self.state_dir / BROKER_DB, self.cfg.persistence.sync)
        lst = self.cfg.listeners
        external_tls = bool(lst.tls_cert_file)
        # Device auth (and with it `cryptography`) only when something needs it: the TLS
        # device listener, or a named policy for loopback clients.
        if not external_tls and (lst.tls_port is not None
                                 or self.cfg.auth.loopback_policy != ALLOW_ALL_NAME):
            from .auth.service import DeviceAuth

            a = self.cfg.auth
            self.auth = DeviceAuth(self.state_dir, loopback_policy=a.loopback_policy,
                                   server_names=a.server_names, region=a.region,
                                   account=a.account, policy_cache_size=a.policy_cache_size)
            await asyncio.get_running_loop().run_in_executor(None, self.auth.prepare)
        self.broker = Broker(self.cfg.mqtt, store, self.auth)
        await self.broker.start()
        if self.auth is not None:
            await self.auth.start(self.broker)
        if self.cfg.shadow.enabled:  # before any listener: no request finds it missing
            from .shadow.service import start_shadow_service

            self.shadow = await start_shadow_service(self.broker, self.cfg, self.state_dir)
        if self.cfg.shadow_sync.enabled and self.shadow is not None:
            # before the cloud bridge, which it attaches to as each bridge starts
            from .shadow.sync import ShadowSync

            self.shadow_sync = ShadowSync(
                self.cfg.shadow_sync, self.broker, lambda: self.shadow,
                self.state_dir if self.cfg.persistence.enabled else None,
                self.cfg.cloud.thing_name, self.cfg.persistence.sync)
            await self.shadow_sync.start()
        if self.cfg.functions:  # triggers attached before any listener takes a message
            from .functions.executor import FunctionExecutor

            self.functions = FunctionExecutor(self.broker, self.cfg.functions,
                                              self.cfg.models, self.state_dir)
            await self.functions.start()
        if self.boot is not None and self.cfg.cloud.endpoint and self.cfg.cloud.jobs:
            from .deployment.jobs import JobsAgent  # attached to each bridge as it starts

            self.jobs = JobsAgent(self.state_dir, self.cfg.cloud.thing_name)
        await self._start_cloud()
        if lst.tls_port is not None:
            if external_tls:
                ctx = external_tls_context(self.cfg)
                await self.broker.listen_tls(lst.tls_host, lst.tls_port, lambda: ctx)
            else:
                await self.broker.listen_tls(lst.tls_host, lst.tls_port, self.auth.ssl_context)
        if self.auth is not None and self.cfg.discovery.enabled:
            from .auth.discovery import DiscoveryServer

            self.discovery = DiscoveryServer(self.auth, self.cfg)
            await self.discovery.start()
        if lst.unix_socket:
            path = Path(lst.unix_socket)
            await self.broker.listen_unix(path if path.is_absolute() else self.state_dir / path)
        # Plaintext last: scripts wait for its port, and then everything else is up too.
        if lst.tcp_port is not None:
            await self.broker.listen_tcp(lst.tcp_host, lst.tcp_port, "tcp")
        if not self.broker.listeners:
            log.warning("no listener configured: set listeners.tcp_port or pass --mqtt-port")
        if self.boot is not None:  # after everything it may reconfigure is up
            from .deployment.agent import DeploymentAgent

            self.deployments = DeploymentAgent(self, self.boot)
            await self.deployments.start()
            if self.jobs is not None:  # jobs run through the agent, so after it
                await self.jobs.start(self.deployments)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._status_writer()))
        interval = watchdog_interval()
        if interval:
            self._tasks.append(loop.create_task(self._watchdog(interval)))
        # Everything built so far lives as long as the process: keep it out of the cyclic
        # collector's full passes, which would otherwise show up as latency spikes.
        gc.freeze()
        notify("READY=1\nSTATUS=serving " + ", ".join(self.broker.listeners))
        log.info("gateway ready on %s (state %s, pid %d)", ", ".join(self.broker.listeners),
                 self.state_dir, os.getpid())

    async def _start_cloud(self) -> None:
        """The bridge to AWS IoT Core, before any listener: no routed message misses the
        spool. Without an endpoint the gateway says it is offline and routes nothing up."""
        if self.cfg.cloud.endpoint is None:
            from .cloud.bridge import STATUS_TOPIC, offline_status

            if self.cfg.routes:
                log.warning("cloud: %d routes configured but no cloud.endpoint: offline, "
                            "nothing is spooled", len(self.cfg.routes))
            self.broker.publish(STATUS_TOPIC, json.dumps(offline_status(self.cfg)), 1, True)
            return
        from .cloud.bridge import CloudBridge

        self.cloud = CloudBridge(self.broker, self.cfg, self.state_dir)
        await self.cloud.start()
        if self.shadow_sync is not None:  # each bridge: a deployment may replace it
            self.shadow_sync.attach(self.cloud)
        if self.jobs is not None:  # at each start: a deployment may replace the bridge
            self.jobs.attach(self.cloud)

    def status(self) -> dict:
        status = {"pid": os.getpid(), "state_dir": str(self.state_dir), "time": time.time(),
                  "state": "running"}
        if self.broker is not None:
            status["mqtt"] = self.broker.status()
        if self.shadow is not None:
            status["shadow"] = self.shadow.status()
        if self.shadow_sync is not None:
            status["shadow_sync"] = self.shadow_sync.status()
        if self.functions is not None:
            status["functions"] = self.functions.status()
        if self.cloud is not None:
            status["cloud"] = self.cloud.status()
        else:
            from .cloud.bridge import offline_status

            status["cloud"] = offline_status(self.cfg)
        status["deployments"] = (self.deployments.status() if self.deployments is not None
                                 else {"enabled": False})
        if self.jobs is not None:
            status["deployments"]["jobs"] = self.jobs.status()
        return status

    async def _status_writer(self) -> None:
        while True:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, write_status, self.state_dir, self.status())
            except OSError as exc:
                log.warning("cannot write status file: %s", exc)
            await asyncio.sleep(STATUS_INTERVAL)

    async def _watchdog(self, interval: float) -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def stop(self, started: bool = True) -> None:
        """Stop what was started. After a failed start, quietly: the error is the news."""
        notify("STOPPING=1")
        for task in self._tasks:
            task.cancel()
        if self.jobs is not None:  # no new job while the parts stop
            await self.jobs.stop()
        if self.deployments is not None:  # no reconfiguring while the parts stop
            await self.deployments.stop()
        if self.discovery is not None:
            await self.discovery.stop()
        if self.functions is not None:  # workers finish publishing while the broker runs
            await self.functions.stop()
        if self.shadow_sync is not None:  # before the bridge and the service it uses
            await self.shadow_sync.stop()
        if self.cloud is not None:  # the spool's last commits while the broker still runs
            await self.cloud.stop()
        if self.shadow is not None:  # answers what it took while the broker still runs
            await self.shadow.stop()
        if self.broker is not None:
            await self.broker.stop()
        if self.auth is not None:
            await self.auth.stop()
        if self.lock.held:  # never touch the status of another gateway's state directory
            with contextlib.suppress(OSError):
                final = self.status()
                final["state"] = "stopped"
                write_status(self.state_dir, final)
            self.lock.release()
        if started:
            log.info("gateway stopped")


async def serve(cfg: GatewayConfig, state_dir: Path, boot: Boot | None = None) -> None:
    gateway = Gateway(cfg, state_dir, boot)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.request_stop)
    try:
        await gateway.start()
    except BaseException:
        await gateway.stop(started=False)
        discard_startup_log()
        raise
    release_startup_log()
    try:
        await gateway.wait_stopped()
    finally:
        await gateway.stop()


_startup_buffer: logging.handlers.MemoryHandler | None = None


def setup_logging(level: str) -> None:
    """Log to stderr, holding start-up lines back until the gateway is ready: a start that
    fails then prints just its one error line."""
    global _startup_buffer
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _startup_buffer = logging.handlers.MemoryHandler(10_000, logging.CRITICAL + 1, stderr,
                                                     flushOnClose=False)
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper()))
    root.addHandler(_startup_buffer)


def release_startup_log() -> None:
    global _startup_buffer
    buffer = _startup_buffer
    if buffer is None:
        return
    _startup_buffer = None
    root = logging.getLogger()
    buffer.flush()
    root.removeHandler(buffer)
    root.addHandler(buffer.target)


def discard_startup_log() -> None:
    """A failed start: drop the held-back lines (logging.shutdown would flush them)."""
    global _startup_buffer
    if _startup_buffer is not None:
        _startup_buffer.buffer.clear()
        logging.getLogger().removeHandler(_startup_buffer)
        _startup_buffer = None


def run(cfg: GatewayConfig, state_dir: Path, boot: Boot | None = None) -> None:
    """Run the gateway until SIGTERM/SIGINT, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(cfg, state_dir, boot))
    else:
        uvloop.run(serve(cfg, state_dir, boot))
