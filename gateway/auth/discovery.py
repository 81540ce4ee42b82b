"""Greengrass discovery for local devices: GET /greengrass/discover/thing/{thingName}.

A device that holds a certificate from this gateway (or one the registry accepts) asks, over
mutual TLS, where its core is; the answer has the shape AWS IoT Greengrass gives: one group,
one core (this gateway) with the addresses and MQTT TLS port devices can use, and the CA
that signed the gateway's server certificate. The certificate must be accepted by the same
rules as on the MQTT TLS listener (registered, active, thing present, or issued by a
registered CA) and belong to the thing named in the path; otherwise the answer is 403.

The HTTP side is deliberately small: one request per connection, HTTP/1.1 or 1.0, no
request bodies, bounded request line and headers, every answer JSON with `Connection:
close`. TLS is driven by hand over ssl.MemoryBIO (as on the MQTT TLS listener) so each
connection gets the SSL context current at accept time (trust anchors change as devices
and CAs are registered) and each refused handshake is logged with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import json
import logging
import re
import socket
import ssl
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from ..mqtt import reason_codes as rc
from ..mqtt.auth_hooks import ClientInfo
from ..names import THING_NAME
from ..tls_session import ServerTLS, describe_tls_error
from .pki_files import host_names

if TYPE_CHECKING:
    from ..config import GatewayConfig
    from .service import DeviceAuth

log = logging.getLogger("lichen.discovery")

DISCOVER_PREFIX = "/greengrass/discover/thing/"
MAX_HEAD = 8192                 # request line and headers together, bytes
MAX_REQUEST_LINE = 2048
MAX_HEADERS = 50
REQUEST_TIMEOUT = 10.0          # from accept to a complete request (handshake included)
LINGER_TIMEOUT = 2.0            # after answering: how long unread input is drained
MAX_CONNECTIONS = 256           # concurrent discovery connections
ADDRESS_REFRESH = 60.0          # seconds between looks at the host's addresses

_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) ([\x21-\x7e]+) HTTP/(1\.[01])")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")
REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 500: "Internal Server Error"}
ERROR_TYPES = {400: "BadRequestException", 403: "ForbiddenException",
               404: "NotFoundException", 405: "MethodNotAllowedException",
               408: "RequestTimeoutException", 500: "InternalServerErrorException"}


class BadRequest(Exception):
    """A request that cannot be parsed; str() says why."""


class Request:
    __slots__ = ("method", "target", "version", "headers")

    def __init__(self, method: str, target: str, version: str,
                 headers: dict[str, str]) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers


def parse_request(head: bytes) -> Request:
    """Parse a request line and headers (without the final CRLF CRLF), strictly."""
    lines = head.split(b"\r\n")
    if len(lines[0]) > MAX_REQUEST_LINE:
        raise BadRequest("request line too long")
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        raise BadRequest("malformed request line")
    method, target, version = (g.decode("ascii") for g in m.groups())
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(f"more than {MAX_HEADERS} header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise BadRequest("malformed header field")  # also obs-fold and bare CR/LF
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise BadRequest("invalid character in a header value")
        key = name.decode("ascii").lower()
        if key in headers:
            if key in ("host", "content-length", "transfer-encoding"):
                raise BadRequest(f"repeated {key} header")
            headers[key] += ", " + value.decode("latin-1")
        else:
            headers[key] = value.decode("latin-1")
    if version == "1.1" and "host" not in headers:
        raise BadRequest("HTTP/1.1 request without a Host header")
    if "transfer-encoding" in headers:
        raise BadRequest("request bodies are not accepted")
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or len(length) > 12):
        raise BadRequest("invalid Content-Length")
    if not target.startswith("/"):
        raise BadRequest("request target must be an absolute path")
    return Request(method, target, version, headers)


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_host_addresses(bind_host: str) -> list[str]:
    """Where devices may reach this host: the TLS listener's address when it is bound to
    one, else this host's names and addresses, the ones other hosts can use first."""
    if bind_host not in _WILDCARD_HOSTS:
        return [bind_host]
    names = host_names()
    if bind_host == "0.0.0.0":  # IPv4 only: IPv6 addresses would not reach the listener
        names = [n for n in names if ":" not in n]
    return [n for n in names if not _is_loopback(n)] + [n for n in names if _is_loopback(n)]


def core_thing_name_for(hostname: str) -> str:
    """A valid thing name from a host name (thing names allow a-z A-Z 0-9 : _ -)."""
    name = re.sub(r"[^a-zA-Z0-9:_-]", "-", hostname)[:128]
    return name or "lichen-core"


class DiscoveryServer:
    """The HTTPS discovery endpoint of one gateway."""

    def __init__(self, auth: DeviceAuth, cfg: GatewayConfig) -> None:
        self.auth = auth
        self.settings = cfg.discovery
        self.mqtt_host = cfg.listeners.tls_host
        self.mqtt_port = cfg.listeners.tls_port
        self.region = cfg.auth.region
        self.account = cfg.auth.account
        self.core_thing_name = (self.settings.core_thing_name
                                or core_thing_name_for(socket.gethostname()))
        self.group_id = self.settings.group_id or ""
        self.addresses: list[str] = list(self.settings.host_addresses)
        self.ca_pem = ""
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[_DiscoveryProtocol] = set()
        self._refresher: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    async def start(self) -> None:
        if self.mqtt_port is None:
            log.info("discovery is not served: the MQTT TLS listener is off")
            return
        if self.mqtt_port == 0:
            log.warning("discovery is not served: the MQTT TLS listener is on an ephemeral "
                        "port (listeners.tls_port = 0), which devices cannot be told")
            return
        self.loop = asyncio.get_running_loop()
        self.ca_pem = self.auth.ca.ca_pem_text()
        if not self.group_id:
            self.group_id = str(uuid.UUID(self.auth.ca.ca_fingerprint()[:32]))
        if not self.addresses:
            self.addresses = await self.loop.run_in_executor(
                None, default_host_addresses, self.mqtt_host)
            self._refresher = self.loop.create_task(self._refresh_addresses())
        self._check_server_names()
        host, port = self.settings.host, self.settings.port
        try:
            self.server = await self.loop.create_server(
                lambda: _DiscoveryProtocol(self), host, port, reuse_address=True, backlog=256)
        except OSError as exc:
            raise OSError(exc.errno, f"discovery listener on {host}:{port}: "
                          f"{exc.strerror or exc} (set another discovery.port, or "
                          "discovery.enabled = false)") from None
        log.info("listening (discovery) on %s: core %s, group %s, MQTT at %s port %d",
                 self.address, self.core_thing_name, self.group_id,
                 ", ".join(self.addresses), self.mqtt_port)

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        if self.server is not None:
            self.server.close()
            for conn in list(self.connections):
                conn.abort()
            with contextlib.suppress(asyncio.TimeoutError, OSError):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)
            self.server = None

    def _check_server_names(self) -> None:
        info = self.auth.ca.server_info()
        if info is None:
            return
        missing = [a for a in self.addresses if a not in info.names]
        if missing and self.settings.host_addresses:
            log.warning("discovery advertises %s, which the gateway's server certificate does "
                        "not name: devices checking the host name will refuse it (add them "
                        "to auth.server_names)", ", ".join(missing))

    async def _refresh_addresses(self) -> None:
        while True:
            await asyncio.sleep(ADDRESS_REFRESH)
            try:
                addresses = await self.loop.run_in_executor(
                    None, default_host_addresses, self.mqtt_host)
            except Exception:
                log.exception("cannot list the host's addresses")
                continue
            if addresses and addresses != self.addresses:
                log.info("discovery now advertises %s", ", ".join(addresses))
                self.addresses = addresses

    # ------------------------------------------------------------------ requests

    def thing_arn(self) -> str:
        return f"arn:aws:iot:{self.region}:{self.account}:thing/{self.core_thing_name}"

    def discover_document(self) -> dict[str, Any]:
        connectivity = [{"Id": addr, "HostAddress": addr, "PortNumber": self.mqtt_port,
                         "Metadata": ""} for addr in self.addresses]
        return {"GGGroups": [{
            "GGGroupId": self.group_id,
            "Cores": [{"thingArn": self.thing_arn(), "Connectivity": connectivity}],
            "CAs": [self.ca_pem],
        }]}

    def refusal(self, info: ClientInfo, der: bytes) -> str | None:
        """Why this certificate is not accepted, or None (then info.thing_name is set).

        The rules are DeviceAuth's; its cache can lag the registry by a watcher interval,
        so a certificate the registry knows is also checked against the registry itself
        (a device revoked a moment ago gets no answer)."""
        if self.auth._admit(info, der) != rc.SUCCESS:
            return "is not accepted (revoked, removed or unknown)"
        registry = self.auth.registry
        cert_id = info.certificate_id or ""
        fresh = registry.certificate(cert_id)
        if fresh is None and cert_id not in self.auth._certs:
            return None  # issued by a registered CA: its thing is its CN
        if fresh is None:
            return "is no longer in the device registry"
        if not fresh.active:
            return f"of thing {fresh.thing} is revoked"
        if registry.get_thing(fresh.thing) is None:
            return f"belongs to thing {fresh.thing}, which was removed"
        info.thing_name = fresh.thing
        return None

    def handle(self, request: Request, der: bytes | None,
               peer: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        """The status, JSON body and extra headers for one parsed request."""
        path = request.target.partition("?")[0]
        if not path.startswith(DISCOVER_PREFIX) or "/" in path[len(DISCOVER_PREFIX):] \
                or path == DISCOVER_PREFIX:
            return _error(404, f"no resource at {path}", peer)
        if request.method != "GET":
            status, body, headers = _error(405, f"{request.method} is not allowed on "
                                                "discovery; use GET", peer)
            headers["Allow"] = "GET"
            return status, body, headers
        if request.headers.get("content-length", "0") != "0":
            return _error(400, "GET requests carry no body", peer)
        thing = unquote(path[len(DISCOVER_PREFIX):])
        if not THING_NAME.fullmatch(thing):
            return _error(400, "invalid thing name: 1-128 characters of a-z, A-Z, 0-9, ':', "
                               "'_' and '-'", peer)
        info = ClientInfo(client_id=f"discovery request from {peer}", listener="discovery",
                          peer_certificate_der=der)
        if der is None:
            status, body, headers = _error(403, "a client certificate is required", peer)
            log.warning("refused discovery for thing %r from %s: no client certificate "
                        "(trace %s)", thing, peer, body["traceId"])
            return status, body, headers
        why = self.refusal(info, der)
        if why is not None:
            status, body, headers = _error(
                403, "the client certificate is not active or not registered", peer)
            log.warning("refused discovery for thing %r from %s: certificate %s... %s "
                        "(trace %s)", thing, peer, (info.certificate_id or "")[:12], why,
                        body["traceId"])
            return status, body, headers
        if info.thing_name != thing:
            status, body, headers = _error(
                403, f"the client certificate does not belong to thing {thing}", peer)
            log.warning("refused discovery for thing %r from %s: its certificate %s... "
                        "belongs to thing %r (trace %s)", thing, peer,
                        (info.certificate_id or "")[:12], info.thing_name, body["traceId"])
            return status, body, headers
        log.info("discovery for thing %s from %s (certificate %s...): core %s at %s port %d",
                 thing, peer, (info.certificate_id or "")[:12], self.core_thing_name,
                 ", ".join(self.addresses), self.mqtt_port)
        return 200, self.discover_document(), {}


def _error(status: int, message: str, peer: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    trace = str(uuid.uuid4())
    if status not in (403,):
        log.info("discovery: %d %s to %s: %s (trace %s)", status, REASONS[status], peer,
                 message, trace)
    return status, {"message": message, "traceId": trace}, {"x-amzn-ErrorType":
                                                             ERROR_TYPES[status]}


def render_response(status: int, body: dict[str, Any], headers: dict[str, str],
                    head: bool = False) -> bytes:
    """The whole response; for HEAD (head=True) without its body, as HTTP requires."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    lines = [f"HTTP/1.1 {status} {REASONS[status]}",
             f"Date: {email.utils.formatdate(usegmt=True)}",
             "Server: lichen",
             "Content-Type: application/json",
             f"Content-Length: {len(payload)}",
             "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else payload)


class _DiscoveryProtocol(asyncio.Protocol):
    """One HTTPS connection: TLS handshake, one request, one answer, close."""

    def __init__(self, server: DiscoveryServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.handshaking = True
        self.answered = False
        self.closed = False
        self.head = False  # a HEAD request: answer without a body
        self.buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else \
                f"{peer[0]}:{peer[1]}"
        if len(self.server.connections) >= MAX_CONNECTIONS:
            log.warning("refused discovery connection from %s: %d connections open",
                        self.peer, MAX_CONNECTIONS)
            self.closed = True
            transport.abort()
            return
        self.server.connections.add(self)
        try:
            self.tls = ServerTLS(self.server.auth.ssl_context())
            self.sslobj = self.tls.sslobj
        except Exception:
            log.exception("discovery: cannot set up TLS")
            self.abort()
            return
        self._timer = self.server.loop.call_later(REQUEST_TIMEOUT, self._timeout)

    def data_received(self, data: bytes) -> None:
        if self.closed or self.answered:
            return  # answered: draining what the client still sends, before closing
        try:
            received = self.tls.receive(data, limit=MAX_HEAD + 4 - len(self.buffer))
        except (ssl.SSLError, OSError) as exc:
            self._send_pending()
            if self.handshaking:
                log.warning("refused discovery TLS connection from %s: %s", self.peer,
                            describe_tls_error(exc))
            else:
                log.info("discovery: TLS error from %s: %s", self.peer,
                         describe_tls_error(exc))
            self._close_now()
            return
        if received.handshake_done:
            self.handshaking = False
        for chunk in received.plaintext:
            self.buffer += chunk
        if received.closed:
            self._close_now()
            return
        self._send_pending()
        end = self.buffer.find(b"\r\n\r\n")
        if _BARE_LF.search(self.buffer, 0, end if end >= 0 else len(self.buffer)):
            self._answer(*_error(400, "lines must end in CRLF", self.peer))
            return
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._answer(*_error(400, f"request line and headers exceed {MAX_HEAD} bytes",
                                     self.peer))
            elif len(self.buffer) > MAX_REQUEST_LINE and b"\r\n" not in self.buffer:
                self._answer(*_error(400, "request line too long", self.peer))
            return
        if end > MAX_HEAD:
            self._answer(*_error(400, f"request line and headers exceed {MAX_HEAD} bytes",
                                 self.peer))
            return
        try:
            request = parse_request(bytes(self.buffer[:end]))
        except BadRequest as exc:
            self._answer(*_error(400, str(exc), self.peer))
            return
        self.head = request.method == "HEAD"
        try:
            der = self.sslobj.getpeercert(binary_form=True)
            self._answer(*self.server.handle(request, der, self.peer))
        except Exception:
            log.exception("discovery: request from %s failed", self.peer)
            self._answer(*_error(500, "internal error", self.peer))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.server.connections.discard(self)

    # ------------------------------------------------------------------ helpers

    def _answer(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        """Send the one answer, close the TLS session, then drain and close the socket
        (closing with unread input would reset the connection before the client reads)."""
        if self.answered or self.closed:
            return
        try:
            response = render_response(status, body, headers, self.head)
        except Exception:
            log.exception("discovery: cannot render the answer to %s", self.peer)
            status, body, headers = _error(500, "internal error", self.peer)
            response = render_response(status, body, headers, self.head)
        self.answered = True
        try:
            self.tls.write(response)
            self.tls.unwrap()
        except (ssl.SSLError, OSError) as exc:
            log.info("discovery: cannot answer %s: %s", self.peer, describe_tls_error(exc))
            self._close_now()
            return
        self._send_pending()
        if self._timer is not None:
            self._timer.cancel()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._timer = self.server.loop.call_later(LINGER_TIMEOUT, self._close_now)
        else:
            self._close_now()

    def _timeout(self) -> None:
        if self.closed or self.answered:
            return
        if self.handshaking:
            log.warning("refused discovery TLS connection from %s: no TLS handshake within "
                        "%.0fs", self.peer, REQUEST_TIMEOUT)
            self._close_now()
        else:
            self._answer(*_error(408, f"no complete request within {REQUEST_TIMEOUT:.0f}s",
                                 self.peer))

    def _send_pending(self) -> None:
        pending = self.tls.pending()
        if pending and not self.transport.is_closing():
            self.transport.write(pending)

    def _close_now(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
