"""Errors the codec and the session state machine raise; each carries its MQTT 5 reason code."""

from . import reason_codes as rc


class MQTTError(Exception):
    """A protocol violation by the peer: the connection is closed with `reason_code`."""

    reason_code = rc.PROTOCOL_ERROR

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        if reason_code is not None:
            self.reason_code = reason_code


class MalformedPacket(MQTTError):
    """Bytes that cannot be parsed as the packet they claim to be (reason 0x81)."""

    reason_code = rc.MALFORMED_PACKET


class ProtocolError(MQTTError):
    """A well-formed packet that the protocol does not allow here (reason 0x82)."""

    reason_code = rc.PROTOCOL_ERROR


class PacketTooLarge(MQTTError):
    reason_code = rc.PACKET_TOO_LARGE


class UnsupportedProtocolVersion(MQTTError):
    """CONNECT names a protocol level we do not speak: answered with a CONNACK, then closed."""

    reason_code = rc.UNSUPPORTED_PROTOCOL_VERSION

    def __init__(self, message: str, level: int) -> None:
        super().__init__(message)
        self.level = level
