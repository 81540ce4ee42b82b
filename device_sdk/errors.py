"""Every error the device SDK raises, in one hierarchy, each with a message that says what to
do about it.

    DeviceSDKError
    ├── ConnectError                no MQTT session with the gateway
    │   ├── GatewayUnreachable      nothing answered at any address (network, gateway down)
    │   ├── TLSError                the TLS handshake failed, or the credentials do not load
    │   ├── ConnectRefused          the gateway answered CONNACK with a failure reason code
    │   └── NotConnected            an operation needs a live connection and there is none
    ├── DiscoveryError              the discovery endpoint answered, but not with a gateway
    ├── QueueError                  the offline queue file cannot be used
    │   ├── QueueFull               a bound (messages or bytes) is reached
    │   └── QueueLocked             another process has the queue file open
    ├── PublishRefused              the gateway refused a publish (PUBACK code, or closed on it)
    ├── SubscribeRefused            the gateway refused a subscription (SUBACK reason code)
    ├── RequestTimeout              no answer in time (a SUBACK, a shadow reply)
    │   └── ShadowTimeout
    └── ShadowRejected              a shadow request answered on .../rejected (code, message)
        ├── ShadowNotFound          404
        └── ShadowVersionConflict   409
"""

from __future__ import annotations


class DeviceSDKError(Exception):
    """The base of everything the device SDK raises on purpose."""


class ConnectError(DeviceSDKError):
    """No MQTT session with the gateway could be had."""


class GatewayUnreachable(ConnectError):
    """Nothing answered: every address was refused, timed out or closed before CONNACK."""


class TLSError(ConnectError):
    """The TLS handshake failed (the gateway's certificate is not trusted, or the gateway
    refused this device's certificate), or the certificate, key or CA files do not load."""


class ConnectRefused(ConnectError):
    """The gateway answered CONNACK with a failure reason code."""

    # Reason codes that retrying will not fix (MQTT 5 values; 3.1.1 codes are mapped to
    # them): protocol, client id, credentials, authorisation, banned, auth method.
    PERMANENT = frozenset({0x81, 0x82, 0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C, 0x90, 0x99,
                           0x9A, 0x9B, 0x9C, 0x9D})

    def __init__(self, message: str, reason_code: int, reason: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.reason = reason

    @property
    def permanent(self) -> bool:
        return self.reason_code in self.PERMANENT


class NotConnected(ConnectError):
    """The operation needs a live connection to the gateway, and there is none now."""


class DiscoveryError(DeviceSDKError):
    """The discovery endpoint answered with an error, or with a document that names no
    gateway this device can use. `status` is the HTTP status (0 for a bad document)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class QueueError(DeviceSDKError):
    """The offline queue file cannot be opened or used."""


class QueueFull(QueueError):
    """The offline queue is at one of its bounds and its policy is to refuse new messages
    (or the message alone is larger than the byte bound)."""


class QueueLocked(QueueError):
    """Another process (or another client in this one) has the queue file open."""


class PublishRefused(DeviceSDKError):
    """The gateway refused a QoS 1 publish: with MQTT 5 its PUBACK carries the reason code;
    MQTT 3.1.1 cannot say no, so a gateway closes the connection instead, and a message it
    closes the connection over twice in a row is taken as refused (reason code 0x80)."""

    def __init__(self, message: str, topic: str, reason_code: int) -> None:
        super().__init__(message)
        self.topic = topic
        self.reason_code = reason_code


class SubscribeRefused(DeviceSDKError):
    """The gateway answered SUBSCRIBE with a failure reason code for a filter."""

    def __init__(self, message: str, topic_filter: str, reason_code: int) -> None:
        super().__init__(message)
        self.topic_filter = topic_filter
        self.reason_code = reason_code


class RequestTimeout(DeviceSDKError):
    """The gateway did not answer in time."""


class ShadowTimeout(RequestTimeout):
    """No reply on the shadow operation's /accepted or /rejected topic in time."""


_HINTS = {
    400: "the request document is invalid",
    401: "the request was not authorised",
    403: "the thing's policy does not allow this shadow topic",
    404: "the shadow does not exist yet; an update creates it",
    409: "the shadow changed since the version given; get it again and retry, or use "
         "Shadow.modify(), which does",
    413: "the shadow state is over the gateway's size limit (shadow.max_document_bytes)",
    415: "the document must be UTF-8 JSON",
    429: "too many shadow requests are waiting for an answer; wait for replies first",
    500: "the gateway failed; see its log",
}


class ShadowRejected(DeviceSDKError):
    """A shadow request answered on `.../rejected`, with the AWS IoT error document's
    `code` (an HTTP status) and `message`."""

    def __init__(self, code: int, message: str, *, thing: str = "", shadow: str = "",
                 operation: str = "", client_token: str | None = None) -> None:
        self.code = code
        self.message = message
        self.thing = thing
        self.shadow = shadow
        self.operation = operation
        self.client_token = client_token
        which = f"named shadow {shadow!r}" if shadow else "classic shadow"
        hint = _HINTS.get(code, "")
        text = f"shadow {operation or 'request'} of thing {thing!r} ({which}) rejected: " \
               f"{code} {message}"
        super().__init__(f"{text} ({hint})" if hint else text)


class ShadowNotFound(ShadowRejected):
    """404: the shadow does not exist (never created, or deleted)."""


class ShadowVersionConflict(ShadowRejected):
    """409: the update named a version that is no longer the shadow's."""


def shadow_rejection(code: int, message: str, **context: str | None) -> ShadowRejected:
    """The most specific ShadowRejected subclass for an error document's code."""
    cls = {404: ShadowNotFound, 409: ShadowVersionConflict}.get(code, ShadowRejected)
    return cls(code, message, **context)  # type: ignore[arg-type]
