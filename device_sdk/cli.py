"""`lichen-device`: the device SDK from a shell, for trying a gateway by hand.

    lichen-device publish things/s1/temp 21.5 --thing s1 --cert s1.crt --key s1.key \\
        --ca ca.pem --host gateway.local
    lichen-device subscribe 'things/s1/#' --count 1 ...
    lichen-device shadow get | shadow update '{"state": {"reported": {"on": true}}}' ...
    lichen-device discover --thing s1 --cert s1.crt --key s1.key --ca ca.pem \\
        --discover gateway.local:8443

Exits 0 on success, 1 with one line on stderr on failure (2 for a usage error).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from .client import DeviceClient
from .discovery import DEFAULT_DISCOVERY_PORT, discover, parse_endpoint
from .errors import DeviceSDKError
from .handles import Delivery
from .message import Message
from .shadow_protocol import ShadowDocument, UpdateAccepted

PROG = "lichen-device"


class CLIError(Exception):
    """One line on stderr, exit status 1."""


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device and gateway")
    g.add_argument("--thing", default=os.environ.get("LICHEN_THING"),
                   help="thing name, also the MQTT client id (default: $LICHEN_THING)")
    g.add_argument("--cert", default=os.environ.get("LICHEN_CERT"),
                   help="device certificate, PEM (default: $LICHEN_CERT)")
    g.add_argument("--key", default=os.environ.get("LICHEN_KEY"),
                   help="device private key, PEM (default: $LICHEN_KEY)")
    g.add_argument("--ca", default=os.environ.get("LICHEN_CA"),
                   help="CA that signed the gateway's certificate (`lichen ca show`); with "
                        "--discover, what the discovery endpoint is checked against")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--host", help="the gateway's address")
    where.add_argument("--discover", metavar="HOST:PORT",
                       help=f"find the gateway through this discovery endpoint (port "
                            f"{DEFAULT_DISCOVERY_PORT} if not given)")
    g.add_argument("--port", type=int, default=8883, help="MQTT TLS port (default 8883)")
    g.add_argument("--mqtt", choices=("5", "3.1.1"), default="5", help="MQTT version")
    g.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for the gateway (default 10)")
    g.add_argument("-v", "--verbose", action="store_true", help="log what the SDK does")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Talk to a Lichen gateway as a "
                                     "device: publish, subscribe, shadows, discovery.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("publish", help="publish a message (QoS 1: waits for its PUBACK)")
    p.add_argument("topic")
    p.add_argument("message", help="the payload; - reads it from stdin")
    p.add_argument("--qos", type=int, choices=(0, 1), default=1)
    p.add_argument("--retain", action="store_true")
    p.add_argument("--repeat", type=int, default=1, metavar="N", help="send it N times")
    p.add_argument("--interval", type=float, default=0.0, metavar="S",
                   help="seconds between repeats")
    p.add_argument("--queue", metavar="FILE",
                   help="offline queue file: messages the gateway has not acknowledged stay "
                        "there for the next run (or `flush`)")
    _common(p)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("subscribe", help="print messages: TOPIC PAYLOAD, one per line")
    p.add_argument("filters", nargs="+", metavar="FILTER")
    p.add_argument("--qos", type=int, choices=(0, 1), default=1)
    p.add_argument("--count", type=int, default=0, metavar="N",
                   help="exit after N messages (default: run until interrupted)")
    p.add_argument("--seconds", type=float, default=0.0, metavar="S",
                   help="exit after S seconds (default: no limit)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per message: topic, payload, qos, retain")
    _common(p)
    p.set_defaults(func=cmd_subscribe)

    shadow = sub.add_parser("shadow", help="the thing's device shadow")
    shadow_sub = shadow.add_subparsers(dest="shadow_command", required=True)
    for name, help_text in (("get", "print the shadow (state, delta, metadata, version)"),
                            ("update", "send an update request document"),
                            ("delete", "delete the shadow")):
        p = shadow_sub.add_parser(name, help=help_text)
        if name == "update":
            p.add_argument("document", help="the request document, e.g. "
                           "'{\"state\": {\"reported\": {\"on\": true}}}'; - reads stdin")
        p.add_argument("--name", help="a named shadow (default: the classic shadow)")
        _common(p)
        p.set_defaults(func=cmd_shadow, op=name)

    p = sub.add_parser("discover", help="print what the discovery endpoint answers")
    _common(p)
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("flush", help="send what an offline queue file holds")
    p.add_argument("--queue", metavar="FILE", required=True)
    _common(p)
    p.set_defaults(func=cmd_flush)
    return parser


# ---------------------------------------------------------------------------- helpers


def _need(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n}" for n in names if not getattr(args, n)]
    if missing:
        raise CLIError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                       "required")


def _client(args: argparse.Namespace, queue: str | None = None) -> DeviceClient:
    _need(args, "thing", "cert", "key")
    if not args.host and not args.discover:
        raise CLIError("say where the gateway is: --host HOST [--port N] or --discover "
                       "HOST:PORT")
    where: dict[str, Any] = ({"host": args.host, "port": args.port} if args.host
                             else {"discover": args.discover})
    return DeviceClient(args.thing, args.cert, args.key, ca=args.ca, protocol=args.mqtt,
                        connect_timeout=min(args.timeout, 5.0), offline_queue=queue, **where)


def _payload(text: str) -> bytes:
    return sys.stdin.buffer.read() if text == "-" else text.encode()


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True), flush=True)


def _shadow_json(result: ShadowDocument | UpdateAccepted) -> dict[str, Any]:
    """The AWS response document's shape, rebuilt from the typed result."""
    if isinstance(result, ShadowDocument):
        state = {k: v for k, v in (("desired", result.desired), ("reported", result.reported),
                                   ("delta", result.delta)) if v}
        doc: dict[str, Any] = {"state": state, "metadata": result.metadata,
                               "version": result.version}
    else:
        doc = {"state": result.state, "metadata": result.metadata, "version": result.version}
    if result.timestamp is not None:
        doc["timestamp"] = result.timestamp
    return doc


# ---------------------------------------------------------------------------- commands


def cmd_publish(args: argparse.Namespace) -> int:
    if args.repeat < 1:
        raise CLIError("--repeat must be at least 1")
    payload = _payload(args.message)
    client = _client(args, args.queue)
    deliveries: list[Delivery] = []
    try:
        if args.qos == 1 and args.queue:
            # queue first, so nothing is lost if the gateway cannot be reached
            for i in range(args.repeat):
                deliveries.append(client.publish(args.topic, payload, 1, args.retain))
                if args.interval and i + 1 < args.repeat:
                    time.sleep(args.interval)
            _connect_or_keep(client, args)
        else:
            client.connect(args.timeout)
            for i in range(args.repeat):
                delivery = client.publish(args.topic, payload, args.qos, args.retain)
                deliveries.append(delivery)
                if args.qos == 0:
                    delivery.wait(0)
                if args.interval and i + 1 < args.repeat:
                    time.sleep(args.interval)
        if not client.flush(args.timeout):
            raise CLIError(f"no PUBACK for {len(client.queue)} message(s) within "
                           f"{args.timeout:g} s" + _kept(args))
    finally:
        client.close()
    # A refused message leaves the queue as an acknowledged one does: the Delivery tells.
    failed = [d.error for d in deliveries if d.error is not None]
    if failed:
        more = f" ({len(failed)} of {len(deliveries)} messages refused)" \
            if len(deliveries) > 1 else ""
        raise CLIError(f"{failed[0]}{more}")
    return 0


def _kept(args: argparse.Namespace) -> str:
    if not getattr(args, "queue", None):
        return ""
    return (f"; they stay in {args.queue} (`{PROG} flush --queue {args.queue} ...` sends "
            "them)")


def _connect_or_keep(client: DeviceClient, args: argparse.Namespace) -> None:
    try:
        client.connect(args.timeout)
    except DeviceSDKError as exc:
        raise CLIError(f"{exc}: {len(client.queue)} message(s) not sent" + _kept(args)) \
            from None


def cmd_flush(args: argparse.Namespace) -> int:
    client = _client(args, args.queue)
    try:
        waiting = len(client.queue)
        if waiting:
            _connect_or_keep(client, args)
            if not client.flush(args.timeout):
                raise CLIError(f"no PUBACK for {len(client.queue)} message(s) within "
                               f"{args.timeout:g} s" + _kept(args))
        print(f"sent {waiting} message(s)", flush=True)
    finally:
        client.close()
    return 0


def cmd_subscribe(args: argparse.Namespace) -> int:
    import queue

    client = _client(args)
    inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
    try:
        client.connect(args.timeout)
        for f in args.filters:
            client.subscribe(f, inbox.put, args.qos, timeout=args.timeout)
        deadline = time.monotonic() + args.seconds if args.seconds > 0 else None
        received = 0
        while args.count <= 0 or received < args.count:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                message = inbox.get(timeout=1.0 if left is None else min(left, 1.0))
            except queue.Empty:
                continue
            received += 1
            _print_message(message, args.json)
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    if args.count > 0 and received < args.count:
        raise CLIError(f"{received} of {args.count} message(s) within {args.seconds:g} s")
    return 0


def _print_message(message: Message, as_json: bool) -> None:
    try:
        text = message.payload.decode()
    except UnicodeDecodeError:
        text = None
    if as_json:
        doc: dict[str, Any] = {"topic": message.topic, "qos": message.qos,
                               "retain": message.retain}
        if text is not None:
            doc["payload"] = text
        else:
            doc["payload_hex"] = message.payload.hex()
        print(json.dumps(doc), flush=True)
    else:
        print(message.topic, text if text is not None else message.payload.hex(), flush=True)


def cmd_shadow(args: argparse.Namespace) -> int:
    document = None
    if args.op == "update":
        text = sys.stdin.read() if args.document == "-" else args.document
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise CLIError(f"the update document is not JSON: {exc}") from None
        if not isinstance(document, dict) or not isinstance(document.get("state"), dict):
            raise CLIError("the update document must be an object with a \"state\" object, "
                           "e.g. {\"state\": {\"reported\": {\"on\": true}}}")
    client = _client(args)
    try:
        client.connect(args.timeout)
        shadow = client.shadow(args.name)
        if args.op == "get":
            _print_json(_shadow_json(shadow.get(args.timeout)))
        elif args.op == "update":
            version = document.get("version")
            _print_json(_shadow_json(shadow.update(document["state"], version=version,
                                                   timeout=args.timeout)))
        else:
            _print_json({"version": shadow.delete(args.timeout)})
    finally:
        client.close()
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    _need(args, "thing", "cert", "key", "discover")
    ep = parse_endpoint(args.discover, DEFAULT_DISCOVERY_PORT)
    found = discover(args.thing, args.cert, args.key, host=ep.host, port=ep.port, ca=args.ca,
                     timeout=args.timeout)
    _print_json(dict(found.document))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (CLIError, DeviceSDKError, ValueError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
