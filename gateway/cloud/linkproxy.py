"""A TCP proxy on 127.0.0.1 that plays the uplink: it can be cut and restored, and can limit
its bandwidth, for tests and benchmarks of the cloud connection (the gateway connects to the
proxy, the proxy to the stand-in). Threads and blocking sockets: few connections, simple.
"""

from __future__ import annotations

import socket
import threading
import time

CHUNK = 65536


class LinkProxy:
    def __init__(self, target_port: int, rate_bytes_s: float | None = None) -> None:
        self.target_port = target_port
        self.rate = rate_bytes_s
        self.up = True
        self.connections = 0
        self.bytes_up = 0              # client -> target, all connections
        self.hold = False
        self._held: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="linkproxy", daemon=True).start()

    def cut(self, hold: bool = False) -> None:
        """Drop every connection and refuse new ones, as a dead uplink does; hold=True
        accepts new ones but passes nothing until restore(), as a link that drops packets
        (a client's connect then hangs instead of failing)."""
        self.up = False
        self.hold = hold
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def restore(self) -> None:
        self.up = True
        with self._lock:
            held, self._held = self._held, []
        for client in held:
            self._connect(client)

    def close(self) -> None:
        self._closed = True
        self.cut()
        with self._lock:
            held, self._held = self._held, []
        for client in held:
            client.close()
        try:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self.up:
                if self.hold:
                    with self._lock:
                        self._held.append(client)
                else:
                    client.close()
                continue
            self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._pairs.append((client, upstream))
            self.connections += 1
        threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        started = time.monotonic()
        sent = 0
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                if up:
                    self.bytes_up += len(data)
                if self.rate:  # pace to the configured bandwidth
                    sent += len(data)
                    ahead = sent / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
