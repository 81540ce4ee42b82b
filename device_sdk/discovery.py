"""Finding the gateway: Greengrass discovery, `GET /greengrass/discover/thing/{thing}` over
mutual TLS, answered with the shape AWS IoT Greengrass uses:

    {"GGGroups": [{"GGGroupId": "...",
                   "Cores": [{"thingArn": "...",
                              "Connectivity": [{"Id": "...", "HostAddress": "10.0.0.5",
                                                "PortNumber": 8883, "Metadata": ""}]}],
                   "CAs": ["-----BEGIN CERTIFICATE-----..."]}]}

`parse_discovery` is pure; `discover` does the HTTPS request.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .errors import DiscoveryError, GatewayUnreachable
from .tls import client_context, explain

DISCOVER_PATH = "/greengrass/discover/thing/"
DEFAULT_DISCOVERY_PORT = 8443
MAX_RESPONSE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One address at which a gateway's MQTT TLS listener may be reached."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Core:
    thing_arn: str
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class Discovered:
    """What discovery said: the group's cores, where each listens, and the CAs to trust."""

    group_id: str
    cores: tuple[Core, ...]
    ca_pem: str                       # every CA of the group, concatenated PEM
    document: Mapping[str, Any]       # the response as received

    @property
    def endpoints(self) -> list[Endpoint]:
        """Every core's addresses, in the order given (a device tries them in turn)."""
        return [e for core in self.cores for e in core.endpoints]


def parse_endpoint(text: str, default_port: int) -> Endpoint:
    """"HOST", "HOST:PORT" or "[IPv6]:PORT" -> Endpoint."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"bad address {text!r}: no closing ]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"bad address {text!r}: no host")
    if not port_text:
        return Endpoint(host, default_port)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {text!r}")
    return Endpoint(host, int(port_text))


def parse_discovery(document: Any) -> Discovered:
    """Check and read a discovery response document. Raises DiscoveryError (status 0) when
    it lacks what a device needs: a core with an address and a CA."""

    def bad(why: str) -> DiscoveryError:
        return DiscoveryError(f"the discovery response is not usable: {why}")

    if not isinstance(document, Mapping) or not isinstance(document.get("GGGroups"), list):
        raise bad("no GGGroups list")
    if not document["GGGroups"]:
        raise bad("no group: the gateway has no group for this thing")
    group = document["GGGroups"][0]  # a thing belongs to one group here, as in Greengrass v2
    if not isinstance(group, Mapping):
        raise bad("a group is not an object")
    cas = group.get("CAs")
    if not isinstance(cas, list) or not cas or not all(isinstance(c, str) for c in cas):
        raise bad("the group has no CAs")
    if not all("BEGIN CERTIFICATE" in c for c in cas):
        raise bad("a CA is not a PEM certificate")
    cores = []
    for core in group.get("Cores") or []:
        if not isinstance(core, Mapping):
            raise bad("a core is not an object")
        endpoints = []
        for entry in core.get("Connectivity") or []:
            if not isinstance(entry, Mapping):
                raise bad("a Connectivity entry is not an object")
            host, port = entry.get("HostAddress"), entry.get("PortNumber")
            if not isinstance(host, str) or not host:
                raise bad("a Connectivity entry has no HostAddress")
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise bad(f"the Connectivity entry for {host} has no valid PortNumber")
            endpoints.append(Endpoint(host, port))
        cores.append(Core(str(core.get("thingArn", "")), tuple(endpoints)))
    if not any(core.endpoints for core in cores):
        raise bad("no core address (Connectivity) to connect to")
    ca_pem = "".join(c if c.endswith("\n") else c + "\n" for c in cas)
    return Discovered(str(group.get("GGGroupId", "")), tuple(cores), ca_pem, document)


def discover(thing_name: str, cert: str | os.PathLike[str], key: str | os.PathLike[str], *,
             host: str, port: int = DEFAULT_DISCOVERY_PORT,
             ca: str | os.PathLike[str] | None = None, timeout: float = 10.0) -> Discovered:
    """Ask the discovery endpoint at host:port where this thing's gateway is.

    `ca` verifies the endpoint's certificate (the gateway's CA, `lichen ca show`; None: the
    system's trust store). Raises GatewayUnreachable, TLSError, or DiscoveryError (with
    the HTTP status) with what to do about it.
    """
    where = str(Endpoint(host, port))
    ctx = client_context(cert, key, ca=ca)
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout)
    try:
        try:
            conn.request("GET", DISCOVER_PATH + quote(thing_name, safe=""),
                         headers={"Accept": "application/json"})
            resp = conn.getresponse()
            body = resp.read(MAX_RESPONSE_BYTES + 1)
        except ssl.SSLError as exc:
            raise explain(ctx.tls_error or exc, f"discovery endpoint {where}") from None
        except TimeoutError:
            raise GatewayUnreachable(f"no answer from the discovery endpoint {where} within "
                                     f"{timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            if ctx.tls_error is not None:
                raise explain(ctx.tls_error, f"discovery endpoint {where}") from None
            raise GatewayUnreachable(
                f"cannot reach the discovery endpoint {where}: {_os_reason(exc)} (is the "
                "gateway running there, with discovery on (discovery.port, 8443 by "
                "default)?)") from None
    finally:
        conn.close()
    if len(body) > MAX_RESPONSE_BYTES:
        raise DiscoveryError(f"the discovery response from {where} is over "
                             f"{MAX_RESPONSE_BYTES} bytes", resp.status)
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if resp.status != 200:
        message = document.get("message") if isinstance(document, dict) else None
        message = message or body[:200].decode(errors="replace") or resp.reason
        hint = {
            403: f": is this the certificate of thing {thing_name!r}, enrolled and active?",
            404: ": is this a Greengrass discovery endpoint?",
        }.get(resp.status, "")
        raise DiscoveryError(f"discovery for thing {thing_name!r} at {where} answered "
                             f"{resp.status}: {message}{hint}", resp.status)
    if document is None:
        raise DiscoveryError(f"the discovery response from {where} is not JSON", resp.status)
    return parse_discovery(document)


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__

