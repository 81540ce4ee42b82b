"""The health check of a version the gateway has just switched to, within a window: the
broker still listens, every function's handler imports in a fresh worker (and pinned ones
have their workers up), the cloud link is back if it was connected before, and the
document's own check (a function to invoke) succeeds."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    from ..config import GatewayConfig
    from ..daemon import Gateway

POLL_S = 0.1


class HealthCheckFailed(UserError):
    pass


async def _until(deadline: float, ready, what: str) -> None:
    while not ready():
        if time.monotonic() >= deadline:
            raise HealthCheckFailed(what)
        await asyncio.sleep(POLL_S)


async def _probe(gateway: Gateway, cfg: GatewayConfig, deadline: float) -> None:
    """Each function's handler, imported in a worker of its own that is then retired: the
    same start a pool's worker makes, without calling the handler."""
    from ..functions.worker import Outcome, Worker, WorkerStartError

    models = [dataclasses.asdict(m) for m in cfg.models]

    async def no_invoke(*_: Any) -> Outcome:
        return Outcome(False, error_type="HealthCheck", kind="error",
                       error_message="not during a health check")

    for fn in cfg.functions:
        sink = gateway.functions.sinks[fn.name]
        worker = Worker(fn, models, sink, lambda *_: None, no_invoke)
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                await worker.start()
        except WorkerStartError as exc:
            raise HealthCheckFailed(f"function {fn.name}: {exc}") from None
        except TimeoutError:
            await worker.kill()
            raise HealthCheckFailed(f"function {fn.name}: its worker did not start within "
                                    "the health window") from None
        await worker.retire()
        pool = gateway.functions.pools[fn.name]
        if pool.pinned:
            await _until(deadline, lambda p=pool: p.status()["workers"] >= p.fn.instances,
                         f"function {fn.name}: pinned workers not all up within the window")


async def check(gateway: Gateway, cfg: GatewayConfig, doc: dict | None, window_s: float,
                cloud_was_connected: bool) -> None:
    deadline = time.monotonic() + window_s
    if gateway.broker is None or not gateway.broker.listeners:
        raise HealthCheckFailed("the broker has no listener")
    if cfg.functions:
        if gateway.functions is None:
            raise HealthCheckFailed("functions are configured but the executor is not running")
        await _probe(gateway, cfg, deadline)
    if cloud_was_connected and cfg.cloud.endpoint:
        await _until(deadline, lambda: gateway.cloud is not None
                     and gateway.cloud.state == "connected",
                     f"the cloud link did not reconnect within {window_s:g} s")
    probe = (doc or {}).get("health", {}).get("invoke")
    if probe:
        name = probe["function"]
        if gateway.functions is None or name not in gateway.functions.pools:
            raise HealthCheckFailed(f"health function {name}: no such function")
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                out = await gateway.functions.invoke(name, probe.get("event", {}))
        except TimeoutError:
            raise HealthCheckFailed(f"health function {name}: no answer within the "
                                    "window") from None
        if not out.ok:
            raise HealthCheckFailed(f"health function {name}: {out.error_type}: "
                                    f"{out.error_message}")
