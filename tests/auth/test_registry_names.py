"""Registry names are checked whole: a trailing newline is not part of a valid name."""

import pytest

from gateway.auth.registry import Registry, RegistryError


@pytest.mark.parametrize("bad", ["thing\n", "a b", "", "x" * 129])
def test_thing_names(tmp_path, bad):
    with pytest.raises(RegistryError, match="invalid thing name"):
        Registry(tmp_path / "r.db").add_thing(bad)


def test_policy_and_attribute_names(tmp_path):
    reg = Registry(tmp_path / "r.db")
    with pytest.raises(RegistryError, match="invalid policy name"):
        reg.put_policy("policy\n", '{"Version": "2012-10-17", "Statement": []}')
    with pytest.raises(RegistryError):
        reg.add_thing("t1", {"key\n": "v"})
    with pytest.raises(RegistryError):
        reg.add_thing("t2", {"key": "value\n"})
    assert reg.add_thing("t3", {"key": "value"}).name == "t3"
