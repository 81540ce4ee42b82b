"""Certificate authentication and policy authorisation for the broker.

On the TLS device listener a client is admitted only with a certificate that chains to a
trusted CA (checked by OpenSSL in the handshake), is known to the registry (or issued by a
registered CA) and is not revoked. Its thing name comes from the registry (or the
certificate's CN), and its attached policies decide connect/publish/subscribe/receive.
Loopback listeners get the configured loopback policy (allow-all by default).

The registry is shared with the CLI: a watcher notices its changes (SQLite data_version) and
applies them to live connections, so `lichen device revoke` disconnects a device at once.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

from ..mqtt import reason_codes as rc
from ..mqtt.auth_hooks import AuthHooks, ClientInfo
from ..state_dir import PKI_DIR, REGISTRY_DB
from .default_policies import ALLOW_ALL_NAME, DEVICE_POLICY, DEVICE_POLICY_NAME
from .pki_files import PKIFiles, fingerprint_der
from .policy import CompiledPolicySet, Context, Policy, PolicyEngine, PolicyError
from .prepare import prepare_pki
from .registry import CertificateRecord, Registry, Thing

log = logging.getLogger("lichen.auth")

LOOPBACK_LISTENERS = ("tcp", "unix")
WATCH_INTERVAL = 0.5
RENEWAL_CHECK_INTERVAL = 3600.0


class DeviceAuth(AuthHooks):
    def __init__(self, state_dir: Path, *, loopback_policy: str = ALLOW_ALL_NAME,
                 server_names: list[str] | None = None, region: str = "local",
                 account: str = "000000000000", policy_cache_size: int = 4096) -> None:
        self.state_dir = state_dir
        self.ca = PKIFiles(state_dir / PKI_DIR)   # read-only here: no `cryptography`
        self.registry = Registry(state_dir / REGISTRY_DB)
        self.engine = PolicyEngine(region=region, account=account,
                                   cache_size=policy_cache_size)
        self.loopback_policy = loopback_policy
        self.server_names = server_names or []
        self.broker = None
        self._ctx: ssl.SSLContext | None = None
        self._certs: dict[str, CertificateRecord] = {}
        self._things: dict[str, Thing] = {}
        self._policies: dict[str, Policy] = {}
        self._trust_key: tuple = ()
        self._version = -1
        self._reloaded = False
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------------ set-up

    def prepare(self) -> None:
        """Create what is missing (CA, default policy, server certificate) and load state."""
        prepare_pki(self.state_dir, self.server_names)  # a child process, when there is work
        if DEVICE_POLICY_NAME not in self.registry.policies():
            self.registry.put_policy(DEVICE_POLICY_NAME, DEVICE_POLICY)
        if self.loopback_policy != ALLOW_ALL_NAME:
            self.registry.get_policy(self.loopback_policy)  # must exist
        self._reload()

    def ssl_context(self) -> ssl.SSLContext:
        assert self._ctx is not None
        return self._ctx

    def _build_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.ca.server_cert_path, self.ca.server_key_path)
        anchors = [self.ca.ca_pem_text()] + [pem for _id, _name, pem in self.registry.cas()]
        anchors += [c.pem for c in self._certs.values()
                    if c.source == "registered" and c.active]
        ctx.load_verify_locations(cadata="\n".join(anchors))
        # Lets a registered device certificate (e.g. one issued by AWS IoT, whose CA we do
        # not hold) stand as its own trust anchor.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _reload(self) -> None:
        reg = self.registry
        self._version = reg.data_version()
        self._reloaded = True
        self._certs = {c.id: c for c in reg.certificates()}
        self._things = {t.name: t for t in reg.list_things()}
        policies = {}
        for name, text in reg.policies().items():
            try:
                policies[name] = Policy.parse(text, name=name)
            except PolicyError as exc:
                log.error("policy %s is invalid and grants nothing: %s", name, exc)
        self._policies = policies
        trust_key = (tuple(c[0] for c in reg.cas()),
                     tuple(sorted(c.id for c in self._certs.values()
                                  if c.source == "registered" and c.active)))
        if trust_key != self._trust_key or self._ctx is None:
            self._ctx = self._build_context()
            self._trust_key = trust_key

    async def start(self, broker) -> None:
        self.broker = broker
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.registry.close()

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        next_renewal_check = loop.time() + RENEWAL_CHECK_INTERVAL
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                if self.registry.data_version() != self._version:
                    self._reload()
                if self._reloaded:  # here or by a connect that saw a new certificate
                    self._reloaded = False
                    self._apply_to_live_connections()
                if loop.time() >= next_renewal_check:
                    next_renewal_check = loop.time() + RENEWAL_CHECK_INTERVAL
                    await self.renew_server_certificate()
            except Exception:
                log.exception("registry reload failed")

    async def renew_server_certificate(self) -> bool:
        """Re-issue the server certificate if it nears expiry or the host's names changed;
        new handshakes use it at once, live connections are untouched."""
        renewed = await asyncio.get_running_loop().run_in_executor(
            None, prepare_pki, self.state_dir, self.server_names)
        if renewed:
            self._ctx = self._build_context()
        return renewed

    # ------------------------------------------------------------------ decisions

    def _permissions(self, info: ClientInfo, policy_names: list[str]) -> CompiledPolicySet:
        """The connection's policies compiled once; the broker's hot-path checks then hit
        their bounded decision cache."""
        policies = [self._policies[n] for n in policy_names if n in self._policies]
        context = Context(client_id=info.client_id, thing_name=info.thing_name,
                          attributes=dict(info.attributes))
        return self.engine.compile(policies, context)

    def authenticate(self, info: ClientInfo, password: bytes | None) -> int:
        if info.listener in LOOPBACK_LISTENERS:
            if self.loopback_policy != ALLOW_ALL_NAME:
                info.permissions = self._permissions(info, [self.loopback_policy])
            return rc.SUCCESS
        der = info.peer_certificate_der
        if der is None:
            log.warning("refused %s: no client certificate", info.client_id)
            return rc.NOT_AUTHORIZED
        verdict = self._admit(info, der)
        if verdict:
            return verdict
        perms = info.permissions
        if not perms.can_connect():
            log.warning("refused client id %r for thing %r (certificate %s...): the thing's "
                        "policies do not allow iot:Connect as that client id", info.client_id,
                        info.thing_name, info.certificate_id[:12])
            return rc.NOT_AUTHORIZED
        log.info("admitted thing %s as client %s (certificate %s...)", info.thing_name,
                 info.client_id, info.certificate_id[:12])
        return rc.SUCCESS

    def _admit(self, info: ClientInfo, der: bytes) -> int:
        cert_id = fingerprint_der(der)
        info.certificate_id = cert_id
        if self.registry.data_version() != self._version:
            self._reload()  # enrolled or revoked since the watcher last looked
        rec = self._certs.get(cert_id)
        if rec is not None:
            if not rec.active:
                log.warning("refused %s: certificate %s... of thing %s is revoked",
                            info.client_id, cert_id[:12], rec.thing)
                return rc.NOT_AUTHORIZED
            thing = self._things.get(rec.thing)
            if thing is None:
                log.warning("refused %s: thing %s was removed", info.client_id, rec.thing)
                return rc.NOT_AUTHORIZED
        else:
            # Rare (a CA-registered device's first connect, or a removed thing): only here
            # does the daemon load `cryptography`.
            from cryptography import x509

            from .pki import common_name, load_cert_pem

            cert = x509.load_der_x509_certificate(der)
            ca_cert = load_cert_pem(self.ca.ca_pem_text().encode(), str(self.ca.ca_cert_path))
            if cert.issuer == ca_cert.subject:
                # Issued here but not in the registry: the thing was removed.
                log.warning("refused %s: certificate %s... is not in the device registry "
                            "(removed?)", info.client_id, cert_id[:12])
                return rc.NOT_AUTHORIZED
            # Chained to a registered CA (OpenSSL checked that): the thing is the CN.
            name = common_name(cert) or ""
            thing = self._things.get(name) or Thing(name, {}, [DEVICE_POLICY_NAME])
        info.thing_name = thing.name
        info.attributes = dict(thing.attributes)
        info.permissions = self._permissions(info, thing.policies)
        return rc.SUCCESS

    def _apply_to_live_connections(self) -> None:
        """Disconnect revoked or removed devices; refresh everyone else's permissions."""
        if self.broker is None:
            return
        for conn in list(self.broker.connections):
            info = conn.info
            if info is None or info.listener in LOOPBACK_LISTENERS or conn.closed:
                continue
            if info.peer_certificate_der is None:
                continue
            verdict = self._admit(info, info.peer_certificate_der)
            if verdict == rc.SUCCESS and not info.permissions.can_connect():
                verdict = rc.NOT_AUTHORIZED
            if verdict:
                log.warning("disconnecting %s (thing %s): its certificate is no longer "
                            "accepted", info.client_id, info.thing_name)
                conn.close(rc.NOT_AUTHORIZED, "certificate revoked or device removed")
                continue
            if conn.session is not None:
                conn.session.perms = info.permissions
