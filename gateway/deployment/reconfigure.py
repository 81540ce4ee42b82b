"""Bring a running gateway to a new config's deployable sections, in place where a part can
change in place, else by restarting that part alone. Listeners are not deployable, so device
connections stay up throughout.

    log level        in place
    registry         in place (the auth service reloads the registry file on change)
    functions/models the function executor restarts (its workers; queued invocations of
                     the old one end with a Shutdown error)
    routes, spool    the cloud bridge restarts (link and spool); offline: nothing to do
    shadow settings  the shadow service restarts (it answers what it took first)
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import GatewayConfig
    from ..daemon import Gateway

log = logging.getLogger("lichen.deploy")


async def reconfigure(gateway: Gateway, new: GatewayConfig) -> list[str]:
    """Returns what changed, one short phrase each. gateway.cfg follows each part as it is
    taken down, so after a failure half-way a reconfigure back to the old config restarts
    exactly the parts that had been touched."""
    old = gateway.cfg
    changed: list[str] = []
    if old.log_level != new.log_level:
        logging.getLogger().setLevel(getattr(logging, new.log_level.upper()))
        changed.append(f"log level {new.log_level}")
        gateway.cfg = dataclasses.replace(gateway.cfg, log_level=new.log_level)
    if old.functions != new.functions or old.models != new.models:
        if gateway.functions is not None:
            await gateway.functions.stop()
            gateway.functions = None
        gateway.cfg = dataclasses.replace(gateway.cfg, functions=new.functions,
                                          models=new.models)
        if new.functions:
            from ..functions.executor import FunctionExecutor

            executor = FunctionExecutor(gateway.broker, new.functions, new.models,
                                        gateway.state_dir)
            await executor.start()
            gateway.functions = executor
        changed.append("functions restarted: " + (", ".join(f.name for f in new.functions)
                                                  or "none"))
    if old.routes != new.routes or old.spool != new.spool:
        if gateway.cloud is not None:
            await gateway.cloud.stop()
            gateway.cloud = None
        gateway.cfg = dataclasses.replace(gateway.cfg, routes=new.routes, spool=new.spool)
        await gateway._start_cloud()
        changed.append(f"cloud bridge restarted ({len(new.routes)} routes)")
    if old.shadow != new.shadow:
        if gateway.shadow is not None:
            await gateway.shadow.stop()
            gateway.shadow = None
        gateway.cfg = dataclasses.replace(gateway.cfg, shadow=new.shadow)
        if new.shadow.enabled:
            from ..shadow.service import start_shadow_service

            gateway.shadow = await start_shadow_service(gateway.broker, new, gateway.state_dir)
        changed.append("shadow service restarted")
    log.info("deployment: %s", "; ".join(changed) or "no component changed")
    return changed
