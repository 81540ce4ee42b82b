"""The sample policy the README's tour uses is valid AWS IoT policy JSON and grants what the
README says it grants."""

from __future__ import annotations

from gateway.auth.policy import Context, Policy, PolicyEngine
from tests.conftest import ROOT

EXAMPLE = ROOT / "deploy" / "examples" / "policies" / "floor-ops.json"


def test_floor_ops_example_grants_own_things_and_own_floor_only() -> None:
    policy = Policy.parse(EXAMPLE.read_text(), name="floor-ops")
    engine = PolicyEngine(region="local", account="000000000000")
    ctx = Context("sensor-1", thing_name="sensor-1", attributes={"floor": "3"})

    def allowed(action: str, target: str) -> bool:  # a client id, topic or topic filter
        return engine.is_allowed([policy], action, ctx, target)

    assert allowed("iot:Connect", "sensor-1")
    assert not allowed("iot:Connect", "sensor-2")
    assert allowed("iot:Publish", "floors/3/temp")
    assert allowed("iot:Publish", "things/sensor-1/temp")
    assert not allowed("iot:Publish", "floors/4/temp")
    assert not allowed("iot:Publish", "things/sensor-2/temp")
    assert allowed("iot:Subscribe", "floors/3/alarms")
    assert not allowed("iot:Publish", "floors/3/alarms/clear")   # the explicit Deny
