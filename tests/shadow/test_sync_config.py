"""[shadow_sync] settings: defaults, and one line naming the field for each bad value."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, config_from_dict

CLOUD = {"endpoint": "127.0.0.1", "thing_name": "gw", "cert_file": "c", "key_file": "k"}


def test_defaults_are_greengrass_like_and_off() -> None:
    s = config_from_dict({}).shadow_sync
    assert not s.enabled and s.things == ["$gateway"] and s.shadows == ["$classic"]
    assert (s.direction, s.desired_conflict, s.reported_conflict) == ("both", "cloud", "local")
    assert s.max_inflight == 10 and s.max_document_bytes == 8192


@pytest.mark.parametrize("section, field", [
    ({"things": ["not a name"]}, "shadow_sync.things"),
    ({"shadows": ["bad/name"]}, "shadow_sync.shadows"),
    ({"direction": "sideways"}, "shadow_sync.direction"),
    ({"reported_conflict": "newest"}, "shadow_sync.reported_conflict"),
    ({"rate": 0}, "shadow_sync.rate"),
    ({"max_inflight": 0}, "shadow_sync.max_inflight"),
    ({"enabled": True}, "shadow_sync.enabled"),          # no cloud endpoint
])
def test_bad_values_name_the_field(section: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"shadow_sync": section})
    assert str(err.value).startswith(field + ":")
    assert "\n" not in str(err.value)


def test_enabled_with_a_cloud() -> None:
    cfg = config_from_dict({"cloud": CLOUD, "shadow_sync": {"enabled": True,
                                                             "things": ["$registered", "s-*"]}})
    assert cfg.shadow_sync.enabled
    with pytest.raises(ConfigError, match="^shadow_sync.enabled: needs shadow.enabled"):
        config_from_dict({"cloud": CLOUD, "shadow": {"enabled": False},
                          "shadow_sync": {"enabled": True}})
