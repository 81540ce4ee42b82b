"""A temperature sensor: one reading a second, published at QoS 1, none lost to an outage.

    python -m device_sdk.examples.temperature_sensor --thing sensor-1 \\
        --cert sensor-1.crt --key sensor-1.key --ca ca.pem --discover gateway.local:8443

Readings go through an offline queue file: while the gateway is unreachable they wait there
(up to a day of them; past that the oldest give way), and they are sent in order when it is
back, also after the sensor itself restarts.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

from device_sdk import DeviceClient, OfflineQueue

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


def read_celsius() -> float:
    """The SoC temperature on a Raspberry Pi (any Linux with a thermal zone); elsewhere a
    made-up slow curve, so the example runs anywhere."""
    try:
        return int(THERMAL_ZONE.read_text()) / 1000
    except (OSError, ValueError):
        return round(20 + 3 * math.sin(time.time() / 600), 2)


def run(client: DeviceClient, count: int = 0, interval: float = 1.0) -> None:
    """Publish `count` readings (0: forever), one every `interval` seconds."""
    topic = f"things/{client.thing_name}/temperature"
    client.start()  # connects in the background and keeps reconnecting
    sent = 0
    while count <= 0 or sent < count:
        client.publish(topic, {"celsius": read_celsius(), "time": round(time.time(), 3)})
        sent += 1
        if count <= 0 or sent < count:
            time.sleep(interval)
    client.flush(timeout=10)  # give the last readings a chance before exiting


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--thing", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True, help="the gateway's CA (`lichen ca show`)")
    p.add_argument("--discover", help="discovery endpoint HOST:PORT")
    p.add_argument("--host", help="or the gateway's address")
    p.add_argument("--port", type=int, default=8883)
    p.add_argument("--queue", default="temperature-queue.sqlite3", help="offline queue file")
    p.add_argument("--count", type=int, default=0, help="readings to send (0: forever)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    where = {"discover": args.discover} if args.discover else \
        {"host": args.host, "port": args.port}
    readings = OfflineQueue(args.queue, max_messages=86_400, when_full="drop-oldest")
    with readings, DeviceClient(args.thing, args.cert, args.key, ca=args.ca,
                                offline_queue=readings, **where) as client:
        try:
            run(client, args.count, args.interval)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
