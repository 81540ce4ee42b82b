"""Fixtures of the IoT Jobs fleet tests (tests/deployment/jobs_fleet.py)."""

from tests.deployment.jobs_fleet import artifact_server, fleet, fleet_clock  # noqa: F401
