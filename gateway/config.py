"""Typed gateway configuration: the one place that reads TOML, validates and explains errors.

Every bound the gateway enforces lives here with a safe default. A bad value raises
ConfigError naming the field, the value and what is allowed, and nothing starts.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import UserError
from .names import THING_NAME, THING_NAME_RULE


class ConfigError(UserError, ValueError):
    """A configuration value that cannot be used; str() is one line naming the field."""


@dataclass(slots=True)
class MQTTLimits:
    max_packet_size: int = 1_048_576          # bytes, both directions
    receive_maximum: int = 100                # inbound QoS>0 publishes in flight per client
    max_inflight: int = 100                   # outbound QoS>0 publishes in flight per client
    max_queued_messages: int = 1000           # per session, QoS>0 waiting to be sent
    max_queued_bytes: int = 16 * 1_048_576    # per connection: QoS 0 dropped past this backlog
    max_connections: int = 10_000
    max_keepalive: int = 65_535               # seconds; longer requests get Server Keep Alive
    max_session_expiry: int = 0               # seconds; 0 = no cap (3.1.1 persistent = never)
    topic_alias_maximum: int = 64             # client -> server aliases per connection
    max_topic_aliases_out: int = 64           # server -> client aliases we may assign
    max_retained_messages: int = 100_000
    max_subscriptions_per_client: int = 1000
    connect_timeout: float = 10.0             # seconds from TCP accept to CONNECT
    sys_interval: int = 10                    # $SYS publish period, seconds; 0 = off
    retain_available: bool = True
    allow_zero_length_client_id: bool = True


@dataclass(slots=True)
class Listeners:
    tcp_host: str = "127.0.0.1"
    tcp_port: int | None = None               # plaintext; loopback only unless tcp_host says
    tls_host: str = "0.0.0.0"
    tls_port: int | None = 8883               # the mutual-TLS device listener
    # Without these, the gateway's own CA and server certificate (STATE_DIR/pki) are used
    # and devices are checked against the registry; with them, any client certificate that
    # chains to tls_ca_file is accepted (no registry, no policies).
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_ca_file: str | None = None
    unix_socket: str | None = None            # path; relative to the state dir


@dataclass(slots=True)
class AuthSettings:
    loopback_policy: str = "allow-all"        # policy for tcp/unix clients, or "allow-all"
    server_names: list[str] = field(default_factory=list)  # extra names in the server cert
    region: str = "local"                     # the region and account of policy ARNs
    account: str = "000000000000"
    policy_cache_size: int = 4096             # policy decisions cached per connection


@dataclass(slots=True)
class DiscoverySettings:
    enabled: bool = True                      # served only with the gateway's own CA
    host: str = "0.0.0.0"
    port: int = 8443                          # HTTPS, mutual TLS
    core_thing_name: str | None = None        # default: the host name
    group_id: str | None = None               # default: derived from the local CA
    host_addresses: list[str] = field(default_factory=list)  # default: this host's


@dataclass(slots=True)
class Persistence:
    enabled: bool = True
    sync: str = "normal"                      # SQLite synchronous: "normal" or "full"


@dataclass(slots=True)
class ShadowSettings:
    enabled: bool = True                      # AWS IoT Device Shadows on $aws/things/...
    max_document_bytes: int = 8192            # state (desired + reported), as AWS IoT: 8 KB
    max_depth: int = 6                        # nesting levels under desired / reported
    history_depth: int = 10                   # past versions kept per shadow; 0 = none
    max_named_shadows_per_thing: int = 1000   # AWS IoT has no limit; a gateway needs one
    max_inflight_per_client: int = 10         # as AWS IoT: more pending requests get 429


@dataclass(slots=True)
class CloudSettings:
    # AWS IoT Core (or a stand-in) over mutual TLS; no endpoint = offline mode.
    endpoint: str | None = None               # e.g. "abc123-ats.iot.eu-west-1.amazonaws.com"
    port: int = 8883                          # 443 uses ALPN x-amzn-mqtt-ca
    thing_name: str | None = None             # the client id; required with endpoint
    cert_file: str | None = None              # paths; relative ones start at the state dir
    key_file: str | None = None
    ca_file: str | None = None                # default: the system trust store
    keepalive_s: int = 60
    min_reconnect_s: float = 1.0              # reconnect waits: up to this at first,
    max_reconnect_s: float = 120.0            # growing with the outage to at most this,
    reconnect_ramp_s: float = 600.0           # reached after this long (gateway.cloud.backoff)
    max_inflight: int = 100                   # publishes awaiting the cloud's PUBACK
    aws_iot_limits: bool = True               # pace as IoT Core allows (100 publishes/s)
    session_expiry_s: int = 3600              # cloud keeps our subscriptions this long
    backlog_warn_after_s: float = 60.0        # log when the spool's backlog grew this long
    jobs: bool = True                         # take deployments from AWS IoT Jobs (with endpoint)
    # connections to IoT Core for the uplink (each takes 100 publishes/s there): client ids
    # THING, THING-2, ...; a cloud topic always uses the same one (gateway.cloud.lanes)
    connections: int = 1


@dataclass(slots=True)
class ShadowSyncSettings:
    # Sync of local shadows with AWS IoT Core's over the cloud connection (gateway.shadow.sync)
    enabled: bool = False
    # thing names or patterns (* ? [..]); "$gateway" is cloud.thing_name, "$registered"
    # every thing in the local device registry
    things: list[str] = field(default_factory=lambda: ["$gateway"])
    # "$classic" for the classic shadow; named shadows by name or pattern
    shadows: list[str] = field(default_factory=lambda: ["$classic"])
    direction: str = "both"                   # or "up" (device to cloud), "down" (to device)
    desired_conflict: str = "cloud"           # who wins a field changed on both sides,
    reported_conflict: str = "local"          # as Greengrass ShadowManager by default
    rate: float = 20.0                        # requests/s to the cloud, all shadows together
    burst: int = 20
    thing_rate: float = 10.0                  # requests/s per thing (IoT Core: 20 updates/s)
    max_inflight: int = 10                    # unanswered requests (IoT Core: 10, then 429)
    max_document_bytes: int = 8192            # AWS IoT's shadow state limit
    max_depth: int = 6
    response_timeout_s: float = 10.0


@dataclass(slots=True)
class SpoolSettings:
    max_messages: int = 1_000_000
    max_bytes: int = 256 * 1_048_576          # topic + payload bytes
    when_full: str = "refuse"                 # or "drop-oldest"
    qos0: str = "memory"                      # QoS 0 uplink: "memory" or "disk"
    memory_window: int = 10_000               # spooled messages kept in RAM for sending
    sync: str = "normal"                      # SQLite synchronous; "full" for power loss


@dataclass(slots=True)
class GatewayConfig:
    mqtt: MQTTLimits = field(default_factory=MQTTLimits)
    listeners: Listeners = field(default_factory=Listeners)
    persistence: Persistence = field(default_factory=Persistence)
    auth: AuthSettings = field(default_factory=AuthSettings)
    discovery: DiscoverySettings = field(default_factory=DiscoverySettings)
    shadow: ShadowSettings = field(default_factory=ShadowSettings)
    cloud: CloudSettings = field(default_factory=CloudSettings)
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    shadow_sync: ShadowSyncSettings = field(default_factory=ShadowSyncSettings)
    log_level: str = "info"
    # [[functions]] / [[models]]: arrays of tables, validated in gateway.functions.settings
    # and gateway.ml.settings (FunctionSettings, ModelSettings)
    functions: list = field(default_factory=list)
    models: list = field(default_factory=list)
    # [[routes]]: gateway.cloud.routes.Route, validated in parse_routes
    routes: list = field(default_factory=list)


_RANGES: dict[str, tuple[float, float]] = {
    "mqtt.max_packet_size": (64, 268_435_460),
    "mqtt.receive_maximum": (1, 65_535),
    "mqtt.max_inflight": (1, 65_535),
    "mqtt.max_queued_messages": (0, 10_000_000),
    "mqtt.max_queued_bytes": (1024, 1 << 40),
    "mqtt.max_connections": (1, 1_000_000),
    "mqtt.max_keepalive": (1, 65_535),
    "mqtt.max_session_expiry": (0, 4_294_967_295),
    "mqtt.topic_alias_maximum": (0, 65_535),
    "mqtt.max_topic_aliases_out": (0, 65_535),
    "mqtt.max_retained_messages": (0, 100_000_000),
    "mqtt.max_subscriptions_per_client": (1, 1_000_000),
    "mqtt.connect_timeout": (0.1, 3600),
    "mqtt.sys_interval": (0, 86_400),
    "auth.policy_cache_size": (0, 1_000_000),
    "listeners.tcp_port": (0, 65_535),
    "listeners.tls_port": (0, 65_535),
    "discovery.port": (1, 65_535),
    "shadow.max_document_bytes": (128, 1_048_576),
    "shadow.max_depth": (1, 64),
    "shadow.history_depth": (0, 1_000_000),
    "shadow.max_named_shadows_per_thing": (0, 10_000_000),
    "shadow.max_inflight_per_client": (1, 65_535),
    "cloud.port": (1, 65_535),
    "cloud.keepalive_s": (5, 1200),
    "cloud.min_reconnect_s": (0.1, 3600),
    "cloud.max_reconnect_s": (0.1, 86_400),
    "cloud.reconnect_ramp_s": (1, 86_400),
    "cloud.backlog_warn_after_s": (1, 86_400),
    "cloud.max_inflight": (1, 65_535),
    "cloud.connections": (1, 32),
    "cloud.session_expiry_s": (0, 4_294_967_295),
    "shadow_sync.rate": (0.01, 100_000),
    "shadow_sync.burst": (1, 100_000),
    "shadow_sync.thing_rate": (0.01, 1000),
    "shadow_sync.max_inflight": (1, 1000),
    "shadow_sync.max_document_bytes": (128, 1_048_576),
    "shadow_sync.max_depth": (1, 64),
    "shadow_sync.response_timeout_s": (0.5, 600),
    "spool.max_messages": (1, 1_000_000_000),
    "spool.max_bytes": (1024, 1 << 44),
    "spool.memory_window": (100, 10_000_000),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "persistence.sync": ("normal", "full"),
    "spool.sync": ("normal", "full"),
    "spool.when_full": ("refuse", "drop-oldest"),
    "spool.qos0": ("memory", "disk"),
    "shadow_sync.direction": ("both", "up", "down"),
    "shadow_sync.desired_conflict": ("local", "cloud"),
    "shadow_sync.reported_conflict": ("local", "cloud"),
    "log_level": ("debug", "info", "warning", "error"),
}


def _check(path: str, value: Any, default: Any, annotation: str) -> Any:
    optional = "None" in annotation
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{path}: a value is required")
    if annotation.startswith("list"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: must be a list of strings, got {value!r}")
        return list(value)
    if "bool" in annotation:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: must be true or false, got {value!r}")
        return value
    if "int" in annotation or "float" in annotation:
        wants_float = "float" in annotation
        ok = isinstance(value, int | float) if wants_float else isinstance(value, int)
        if isinstance(value, bool) or not ok:
            kind = "a number" if wants_float else "an integer"
            raise ConfigError(f"{path}: must be {kind}, got {value!r}")
        lo, hi = _RANGES.get(path, (float("-inf"), float("inf")))
        if not lo <= value <= hi:
            raise ConfigError(f"{path}: must be between {lo:g} and {hi:g}, got {value!r}")
        return float(value) if wants_float else value
    if not isinstance(value, str):
        raise ConfigError(f"{path}: must be a string, got {value!r}")
    choices = _CHOICES.get(path)
    if choices and value not in choices:
        raise ConfigError(f"{path}: must be one of {', '.join(choices)}, got {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: must be a table, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            where = prefix.rstrip(".") or "the top level"
            raise ConfigError(f"{prefix}{key}: unknown setting in {where} "
                              f"(known: {', '.join(sorted(known))})")
    obj = cls()
    for name, f in known.items():
        if name not in data:
            continue
        path = prefix + name
        default = getattr(obj, name)
        if hasattr(default, "__dataclass_fields__"):
            setattr(obj, name, _build(type(default), data[name], path + "."))
        else:
            setattr(obj, name, _check(path, data[name], default, str(f.type)))
    return obj


def config_from_dict(data: dict, base_dir: Path | None = None) -> GatewayConfig:
    """base_dir: where relative paths in [[functions]]/[[models]] start (the config file's
    directory; default the working directory)."""
    data = dict(data)
    functions, models = data.pop("functions", []), data.pop("models", [])
    routes = data.pop("routes", [])
    cfg = _build(GatewayConfig, data, "")
    from .cloud.routes import parse_routes
    from .functions.settings import parse_functions
    from .ml.settings import parse_models

    _check_cloud(cfg.cloud)
    cfg.routes = parse_routes(routes)

    cfg.models = parse_models(models, base_dir)
    cfg.functions = parse_functions(functions, base_dir)
    lst = cfg.listeners
    given = [n for n in ("tls_cert_file", "tls_key_file", "tls_ca_file") if getattr(lst, n)]
    if given and len(given) != 3:
        missing = sorted({"tls_cert_file", "tls_key_file", "tls_ca_file"} - set(given))
        raise ConfigError(f"listeners.{missing[0]}: needed with {', '.join(given)} "
                          "(give all three, or none to use the gateway's own CA)")
    _check_discovery(cfg.discovery)
    _check_shadow_sync(cfg)
    return cfg


def _check_cloud(c: CloudSettings) -> None:
    if c.endpoint is None:
        return
    if not re.fullmatch(r"[A-Za-z0-9.:\[\]-]{1,253}", c.endpoint):
        raise ConfigError(f"cloud.endpoint: must be a host name or address, got {c.endpoint!r}")
    for name in ("thing_name", "cert_file", "key_file"):
        if getattr(c, name) is None:
            raise ConfigError(f"cloud.{name}: needed with cloud.endpoint (the gateway's thing "
                              "and its AWS IoT certificate and key)")
    if not THING_NAME.fullmatch(c.thing_name):
        raise ConfigError(f"cloud.thing_name: must be {THING_NAME_RULE}, got {c.thing_name!r}")
    if c.connections > 1 and len(f"{c.thing_name}-{c.connections}") > 128:
        raise ConfigError(f"cloud.connections: client ids {c.thing_name}-2 ... would be longer "
                          "than AWS IoT's 128 characters; use a shorter thing_name")
    if c.min_reconnect_s > c.max_reconnect_s:
        raise ConfigError(f"cloud.min_reconnect_s: must not exceed cloud.max_reconnect_s "
                          f"({c.max_reconnect_s:g}), got {c.min_reconnect_s:g}")


def _check_discovery(d: DiscoverySettings) -> None:
    if d.core_thing_name is not None and not THING_NAME.fullmatch(d.core_thing_name):
        raise ConfigError(f"discovery.core_thing_name: must be {THING_NAME_RULE}, "
                          f"got {d.core_thing_name!r}")
    if d.group_id is not None and not re.fullmatch(r"[\x21-\x7e]{1,128}", d.group_id):
        raise ConfigError(f"discovery.group_id: must be 1-128 printable characters without "
                          f"spaces, got {d.group_id!r}")
    for addr in d.host_addresses:
        if not re.fullmatch(r"[A-Za-z0-9.:_%\[\]-]{1,253}", addr):
            raise ConfigError(f"discovery.host_addresses: {addr!r} is not a host name or "
                              "address")


_THING_PATTERN = re.compile(r"[a-zA-Z0-9:_*?\[\]!-]{1,128}")
_SHADOW_PATTERN = re.compile(r"[$a-zA-Z0-9:_*?\[\]!-]{1,64}")


def _check_shadow_sync(cfg: GatewayConfig) -> None:
    s = cfg.shadow_sync
    for entry in s.things:
        if entry not in ("$gateway", "$registered") and not _THING_PATTERN.fullmatch(entry):
            raise ConfigError(f"shadow_sync.things: {entry!r} is not a thing name, a pattern "
                              "of one (* ? [...]), $gateway or $registered")
    for entry in s.shadows:
        if entry != "$classic" and not _SHADOW_PATTERN.fullmatch(entry):
            raise ConfigError(f"shadow_sync.shadows: {entry!r} is not $classic, a shadow "
                              "name or a pattern of one (* ? [...])")
    if not s.enabled:
        return
    if cfg.cloud.endpoint is None:
        raise ConfigError("shadow_sync.enabled: needs cloud.endpoint (shadows sync over the "
                          "cloud connection)")
    if not cfg.shadow.enabled:
        raise ConfigError("shadow_sync.enabled: needs shadow.enabled (the local shadows)")


def load_config(path: str | Path | None) -> GatewayConfig:
    """Read and validate a TOML config file; None gives the embedded defaults."""
    if path is None:
        return GatewayConfig()
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return config_from_dict(data, p.parent)


DEFAULT_CONFIG_TOML = """\
# Lichen gateway configuration. Every bound has a safe default; delete a line to use it.
log_level = "info"

[listeners]
# Plaintext MQTT, loopback only. Devices on the network use the TLS listener.
tcp_host = "127.0.0.1"
tcp_port = 1883
# Mutual TLS for devices: certificates from `lichen device add`, checked against the registry.
tls_host = "0.0.0.0"
tls_port = 8883
# A Unix socket for local processes, relative to the state directory.
unix_socket = "mqtt.sock"

[mqtt]
max_packet_size = 1048576
receive_maximum = 100
max_inflight = 100
max_queued_messages = 1000
max_queued_bytes = 16777216
max_connections = 10000
max_keepalive = 65535
max_session_expiry = 0
topic_alias_maximum = 64
max_retained_messages = 100000
max_subscriptions_per_client = 1000
sys_interval = 10

[auth]
# Policy for clients of the loopback/Unix listeners ("allow-all", or a policy name).
loopback_policy = "allow-all"
# Extra DNS names or addresses for the gateway's server certificate.
server_names = []

[discovery]
# Greengrass discovery over mutual TLS (GET /greengrass/discover/thing/NAME): tells an
# enrolled device where the TLS listener is and which CA signed it. Needs tls_port.
enabled = true
host = "0.0.0.0"
port = 8443
# core_thing_name = "my-gateway"   # default: the host name
# group_id = "my-group"            # default: derived from the local CA
# Addresses devices should use (each in auth.server_names too); default: this host's.
host_addresses = []

[persistence]
enabled = true
sync = "normal"

[cloud]
# AWS IoT Core over mutual TLS. Without an endpoint the gateway runs offline (no uplink).
# endpoint = "abc123-ats.iot.eu-west-1.amazonaws.com"
port = 8883                       # 443 uses ALPN (x-amzn-mqtt-ca) through firewalls
# thing_name = "my-gateway"
# cert_file = "cloud/certificate.pem.crt"   # relative to the state directory
# key_file = "cloud/private.pem.key"
# ca_file = "cloud/AmazonRootCA1.pem"       # default: the system trust store
# Reconnecting: the wait grows with the outage, not with the attempts: up to
# min_reconnect_s at first, max_reconnect_s only after reconnect_ramp_s of failures.
min_reconnect_s = 1.0
max_reconnect_s = 120.0
reconnect_ramp_s = 600.0
max_inflight = 100
backlog_warn_after_s = 60         # log a warning when the spool's backlog grew this long
aws_iot_limits = true             # pace publishes as IoT Core allows; false for stand-ins

[spool]
# Everything bound for the cloud waits here (SQLite) until the cloud acknowledges it.
max_messages = 1000000
max_bytes = 268435456
when_full = "refuse"              # or "drop-oldest"
qos0 = "memory"                   # QoS 0 uplink: "memory" (lost on restart) or "disk"
memory_window = 10000
sync = "normal"                   # "full" also survives power loss

# Routes: local topics up to the cloud, cloud topics down to local subscribers.
# {topic} is the whole source topic, {1}, {2}... its levels, {thing} cloud.thing_name.
# [[routes]]
# name = "telemetry"
# direction = "up"
# filter = "sensors/#"
# topic = "dt/{thing}/{topic}"
# qos = 1
#
# [[routes]]
# name = "commands"
# direction = "down"
# filter = "cmd/{thing}/#"
# topic = "commands/{3}"
# qos = 1

[shadow_sync]
# Sync of local shadows with AWS IoT Core's, both ways, over the cloud connection.
enabled = false
things = ["$gateway"]             # names or patterns; "$gateway", "$registered"
shadows = ["$classic"]            # "$classic", named shadow names or patterns
direction = "both"                # or "up" (device to cloud), "down" (cloud to device)
desired_conflict = "cloud"        # who wins a field changed on both sides
reported_conflict = "local"
rate = 20.0                       # requests/s to the cloud (token bucket), burst below
burst = 20
thing_rate = 10.0                 # per thing (IoT Core allows 20 updates/s per thing)

[shadow]
# AWS IoT Device Shadows (classic and named) on $aws/things/THING/shadow/...
enabled = true
max_document_bytes = 8192         # desired + reported state, as AWS IoT
max_depth = 6                     # nesting levels under desired / reported, as AWS IoT
history_depth = 10                # past versions kept per shadow (0: none)
max_named_shadows_per_thing = 1000
max_inflight_per_client = 10      # pending requests per client before 429, as AWS IoT
"""
