"""A relay that follows its shadow: set `desired.on` (an app, the cloud, `lichen shadow
update`) and the relay switches and reports `reported.on`.

    python -m device_sdk.examples.relay --thing relay-1 --cert relay-1.crt \\
        --key relay-1.key --ca ca.pem --discover gateway.local:8443
    lichen shadow update relay-1 '{"state": {"desired": {"on": true}}}'   # on the gateway

A relay that was offline while `desired` changed catches up when it reconnects: the SDK
fetches the shadow after every connection and hands over the delta it missed.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from device_sdk import DeviceClient, ShadowDelta

log = logging.getLogger("relay")


class Relay:
    """Stands in for the hardware: swap `switch` for a GPIO write (gpiozero's
    OutputDevice.on()/off(), say)."""

    def __init__(self) -> None:
        self.on = False

    def switch(self, on: bool) -> None:
        self.on = on
        log.info("relay %s", "ON" if on else "OFF")


def follow_shadow(client: DeviceClient, relay: Relay) -> None:
    """Report where the relay is, then follow every change of desired.on."""
    shadow = client.shadow()
    shadow.report({"on": relay.on})

    def on_delta(delta: ShadowDelta) -> None:
        if "on" in delta.state:
            relay.switch(bool(delta.state["on"]))
            shadow.report({"on": relay.on})

    shadow.on_delta(on_delta)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--thing", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True, help="the gateway's CA (`lichen ca show`)")
    p.add_argument("--discover", help="discovery endpoint HOST:PORT")
    p.add_argument("--host", help="or the gateway's address")
    p.add_argument("--port", type=int, default=8883)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    where = {"discover": args.discover} if args.discover else \
        {"host": args.host, "port": args.port}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with DeviceClient(args.thing, args.cert, args.key, ca=args.ca, **where) as client:
        client.connect()
        follow_shadow(client, Relay())
        log.info("following the shadow of %s", args.thing)
        stop.wait()


if __name__ == "__main__":
    main()
