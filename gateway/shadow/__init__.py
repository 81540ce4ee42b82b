"""AWS IoT Device Shadows: document semantics (document), SQLite store (store), the
MQTT topic service and in-process API (service)."""
