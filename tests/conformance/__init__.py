"""Conformance and interoperability tests: real clients against any MQTT broker."""
