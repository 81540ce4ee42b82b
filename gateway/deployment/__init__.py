"""Deployments (#14): a versioned document states the gateway's desired configuration; it is
validated, staged as a numbered version, switched to atomically, applied in the running
gateway, health-checked and rolled back on failure. See docs/ARCHITECTURE.md."""
