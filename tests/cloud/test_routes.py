"""[[routes]] parsing and topic rewriting (pure)."""

import pytest

from gateway.cloud.routes import Route, RouteConfigError, parse_routes
from gateway.config import ConfigError, config_from_dict
from gateway.mqtt.topics import InvalidTopic


def test_rewrite_placeholders():
    r = Route("t", "up", "sensors/+/temp", "dt/{thing}/{2}/{topic}")
    assert r.target_topic("sensors/kitchen/temp", "gw1") == "dt/gw1/kitchen/sensors/kitchen/temp"
    assert Route("t", "up", "a/#").target_topic("a/b/c", "gw") == "a/b/c"
    assert Route("t", "down", "cmd/{thing}/#").source_filter("gw7") == "cmd/gw7/#"


def test_rewrite_to_a_missing_level_is_an_error():
    r = Route("t", "up", "a/#", "x/{3}")
    with pytest.raises(InvalidTopic, match="no level 3"):
        r.target_topic("a/b", "gw")


def test_parse_defaults():
    (r,) = parse_routes([{"name": "up1", "direction": "up", "filter": "s/#"}])
    assert (r.topic, r.qos) == ("{topic}", 1)


@pytest.mark.parametrize("item, message", [
    ({"name": "r", "direction": "sideways", "filter": "a"}, "routes[0].direction"),
    ({"name": "r", "direction": "up", "filter": "a/#/b"}, "routes[0].filter"),
    ({"name": "r", "direction": "up", "filter": 5}, "routes[0].filter"),
    ({"name": "r", "direction": "up", "filter": "$share/g/a"}, "shared subscription"),
    ({"name": "r", "direction": "up", "filter": "a", "topic": "x/{nope}"}, "unknown placeholder"),
    ({"name": "r", "direction": "up", "filter": "a", "topic": "x/+"}, "cannot hold"),
    ({"name": "r", "direction": "up", "filter": "a", "topic": "x/{"}, "routes[0].topic"),
    ({"name": "r", "direction": "up", "filter": "a", "qos": 2}, "no QoS 2"),
    ({"name": "r", "direction": "up", "filter": "a", "qos": True}, "routes[0].qos"),
    ({"name": "r", "direction": "up", "filter": "a", "extra": 1}, "routes[0].extra"),
    ({"direction": "up", "filter": "a"}, "routes[0].name"),
])
def test_bad_routes_name_the_field(item, message):
    with pytest.raises(RouteConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_routes([item])


def test_duplicate_names_refused():
    item = {"name": "r", "direction": "up", "filter": "a"}
    with pytest.raises(RouteConfigError, match="used by another route"):
        parse_routes([item, dict(item)])


def test_cloud_section_checks():
    with pytest.raises(ConfigError, match="cloud.thing_name: needed"):
        config_from_dict({"cloud": {"endpoint": "x.iot.example.com"}})
    with pytest.raises(ConfigError, match="cloud.endpoint"):
        config_from_dict({"cloud": {"endpoint": "bad host/"}})
    with pytest.raises(ConfigError, match="cloud.min_reconnect_s"):
        config_from_dict({"cloud": {"endpoint": "h", "thing_name": "t", "cert_file": "c",
                                    "key_file": "k", "min_reconnect_s": 10,
                                    "max_reconnect_s": 5}})
    with pytest.raises(ConfigError, match="spool.when_full: must be one of"):
        config_from_dict({"spool": {"when_full": "sometimes"}})
    cfg = config_from_dict({"routes": [{"name": "a", "direction": "down", "filter": "c/#"}]})
    assert cfg.routes[0].direction == "down"


def test_default_config_file_parses():
    import tomllib

    from gateway.config import DEFAULT_CONFIG_TOML

    cfg = config_from_dict(tomllib.loads(DEFAULT_CONFIG_TOML))
    assert cfg.cloud.endpoint is None and cfg.spool.when_full == "refuse"
