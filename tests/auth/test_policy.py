"""AWS IoT policies: parsing and validation, evaluation, policy variables, the per-connection
cache, and a differential test against a deliberately naive reference implementation."""

from __future__ import annotations

import copy as copy_module
import json
import pickle
import time
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth.default_policies import DEVICE_POLICY, DEVICE_POLICY_NAME
from gateway.auth.policy import (
    ACTIONS,
    CONNECT,
    MAX_POLICY_CHARS,
    PUBLISH,
    RECEIVE,
    RETAIN_PUBLISH,
    SUBSCRIBE,
    CompiledPolicySet,
    Context,
    Decision,
    Policy,
    PolicyEngine,
    PolicyError,
)
from gateway.mqtt.auth_hooks import Permissions

ARN = "arn:aws:iot:local:000000000000"


def doc(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def stmt(effect: str, action, resource) -> dict:
    return {"Effect": effect, "Action": action, "Resource": resource}


def allow(action, resource) -> dict:
    return stmt("Allow", action, resource)


def deny(action, resource) -> dict:
    return stmt("Deny", action, resource)


def pol(*statements: dict, name: str = "p") -> Policy:
    return Policy.parse(doc(*statements), name=name)


ENGINE = PolicyEngine(region="local", account="000000000000")
CTX = Context("dev1", thing_name="dev1", attributes={"color": "red", "site": "s1"})


def allowed(policies, action, target, ctx=CTX, engine=ENGINE) -> bool:
    if isinstance(policies, Policy):
        policies = [policies]
    return engine.is_allowed(policies, action, ctx, target)


# --------------------------------------------------------------------------- parsing


def test_parse_text_list_of_statements():
    text = json.dumps(doc(
        allow("iot:Connect", f"{ARN}:client/dev1"),
        {"Sid": "pub", **deny(["iot:Publish", "iot:Receive"], [f"{ARN}:topic/a", "*"])},
    ), indent=4)
    p = Policy.parse(text, name="mine")
    assert p.name == "mine"
    assert [s.path for s in p.statements] == ["Statement[0]", "Statement[1]"]
    first, second = p.statements
    assert first.effect == "Allow" and first.allows
    assert first.actions == {CONNECT}
    assert [r.text for r in first.resources] == [f"{ARN}:client/dev1"]
    assert second.effect == "Deny" and not second.allows and second.sid == "pub"
    assert second.actions == {PUBLISH, RECEIVE}
    assert [r.text for r in second.resources] == [f"{ARN}:topic/a", "*"]


def test_parse_single_statement_object_bytes_and_mapping():
    d = {"Version": "2012-10-17", "Id": "x", "Statement": allow("iot:Publish", "*")}
    for source in (json.dumps(d), json.dumps(d).encode(), d):
        p = Policy.parse(source)
        assert len(p.statements) == 1
        assert p.statements[0].path == "Statement"
        assert p.statements[0].actions == {PUBLISH}


@pytest.mark.parametrize("action, covered", [
    ("iot:*", set(ACTIONS)),
    ("*", set(ACTIONS)),
    ("iot:Pub*", {PUBLISH}),
    ("iot:*Publish", {PUBLISH, RETAIN_PUBLISH}),
    ("iot:?eceive", {RECEIVE}),
    ("IOT:publish", {PUBLISH}),             # IAM: prefix and name are case-insensitive
    ("iot:SUBSCRIBE", {SUBSCRIBE}),
    ("i*:Connect", {CONNECT}),
])
def test_action_names_and_wildcards(action, covered):
    assert pol(allow(action, "*")).statements[0].actions == covered


def test_default_device_policy_parses():
    p = Policy.parse(DEVICE_POLICY, name=DEVICE_POLICY_NAME)
    assert len(p.statements) == 3


# --------------------------------------------------------------------------- validation

GOOD = allow("iot:Publish", f"{ARN}:topic/a")


def with_stmt(**fields) -> dict:
    s = dict(GOOD)
    for k, v in fields.items():
        if v is DROP:
            s.pop(k)
        else:
            s[k] = v
    return doc(GOOD, s)


DROP = object()


@pytest.mark.parametrize("source, message", [
    # the document
    ("{", "document: invalid JSON at line 1 column 2"),
    ("", "document: invalid JSON at line 1 column 1"),
    ("[]", "document: must be a JSON object"),
    ('"x"', "document: must be a JSON object"),
    (b"\xff\xfe", "document: not UTF-8"),
    (42, "document: must be JSON text or a mapping, got int"),
    ('{"Version": "2012-10-17", "Version": "2012-10-17", "Statement": []}',
     'document: duplicate field "Version"'),
    ({"Version": "2012-10-17", "Statement": [GOOD], "Statment": []},
     "Statment: unknown field (expected Version, Statement, Id)"),
    ({"Statement": [GOOD]}, 'Version: missing; must be "2012-10-17"'),
    ({"Version": "2008-10-17", "Statement": [GOOD]},
     'Version: must be "2012-10-17", got "2008-10-17"'),
    ({"Version": "2012-10-17", "Id": 3, "Statement": [GOOD]}, "Id: must be a string, got 3"),
    ({"Version": "2012-10-17"}, "Statement: missing"),
    ({"Version": "2012-10-17", "Statement": "x"},
     'Statement: must be an object or a list of objects, got "x"'),
    ({"Version": "2012-10-17", "Statement": []}, "Statement: must hold at least one statement"),
    # a statement
    (doc(GOOD, "x"), 'Statement[1]: must be a JSON object, got "x"'),
    ('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Effect": "Deny", '
     '"Action": "iot:Publish", "Resource": "*"}]}',
     'Statement[0]: duplicate field "Effect"'),
    (with_stmt(Effect="allow"), 'Statement[1].Effect: must be "Allow" or "Deny", got "allow"'),
    (with_stmt(Effect=DROP), "Statement[1].Effect: missing"),
    (with_stmt(Effect=True), 'Statement[1].Effect: must be "Allow" or "Deny", got true'),
    (with_stmt(Actions="iot:Publish"), "Statement[1].Actions: unknown field"),
    (with_stmt(Condition={}), "Statement[1].Condition: not supported by lichen"),
    (with_stmt(NotAction="iot:Publish"), "Statement[1].NotAction: not supported by lichen"),
    (with_stmt(NotResource="*"), "Statement[1].NotResource: not supported by lichen"),
    (with_stmt(Principal="*"), "Statement[1].Principal: not supported by lichen"),
    (with_stmt(Sid=1), "Statement[1].Sid: must be a string, got 1"),
    # Action
    (with_stmt(Action=DROP), "Statement[1].Action: missing"),
    (with_stmt(Action=[]), "Statement[1].Action: must not be an empty list"),
    (with_stmt(Action=7), "Statement[1].Action: must be a string or a list of strings, got 7"),
    (with_stmt(Action=["iot:Publish", 7]), "Statement[1].Action[1]: must be a string, got 7"),
    (with_stmt(Action=["iot:Publish", None]),
     "Statement[1].Action[1]: must be a string, got null"),
    (with_stmt(Action="Publish"), 'Statement[1].Action: invalid action "Publish"'),
    (with_stmt(Action="iot:"), 'Statement[1].Action: invalid action "iot:"'),
    (with_stmt(Action=["iot:Publish", "iot: Publish"]),
     'Statement[1].Action[1]: invalid action "iot: Publish"'),
    (with_stmt(Action="iot:GetThingShadow"),
     'Statement[1].Action: unsupported action "iot:GetThingShadow": lichen enforces '
     "iot:Connect, iot:Publish, iot:Subscribe, iot:Receive, iot:RetainPublish"),
    (with_stmt(Action="iot:*Shadow"), 'Statement[1].Action: unsupported action "iot:*Shadow"'),
    (with_stmt(Action="s3:*"), 'Statement[1].Action: unsupported action "s3:*"'),
    # Resource
    (with_stmt(Resource=DROP), "Statement[1].Resource: missing"),
    (with_stmt(Resource=[]), "Statement[1].Resource: must not be an empty list"),
    (with_stmt(Resource={"a": 1}), "Statement[1].Resource: must be a string or a list"),
    (with_stmt(Resource=["*", 1.5]), "Statement[1].Resource[1]: must be a string, got 1.5"),
    (with_stmt(Resource="topic/a"), 'Statement[1].Resource: "topic/a" is not an ARN'),
    (with_stmt(Resource=""), 'Statement[1].Resource: "" is not an ARN'),
    (with_stmt(Resource=["*", "**"]), 'Statement[1].Resource[1]: "**" is not an ARN'),
    (with_stmt(Resource="arn:aws"), 'Statement[1].Resource: "arn:aws" is not an ARN'),
    (with_stmt(Resource="arn:aws:s3:::bucket/*"), 'the ARN\'s service must be "iot"'),
    (with_stmt(Resource="arn:aws:*:local:000000000000:topic/a"),
     'the ARN\'s service must be "iot"'),
    (with_stmt(Resource="arn::iot:local:000000000000:topic/a"), "the ARN's partition is empty"),
    (with_stmt(Resource="arn:aws:iot:local:000000000000"), "is an incomplete ARN"),
    (with_stmt(Resource="arn:aws:iot"), "is an incomplete ARN"),
    (with_stmt(Resource=f"{ARN}:topic"), "the resource must be TYPE/NAME"),
    (with_stmt(Resource=f"{ARN}:"), "the resource must be TYPE/NAME"),
    (with_stmt(Resource=f"{ARN}:thing/dev1"),
     'Statement[1].Resource: "arn:aws:iot:local:000000000000:thing/dev1": unsupported '
     'resource type "thing"'),
    (with_stmt(Resource=f"{ARN}:topic/${{iot:ClientId"),
     "policy variable at character 37 has no closing"),
    (with_stmt(Resource=f"{ARN}:topic/${{iot:Connection.Thing.ThingTypeName}}"),
     "unsupported policy variable ${iot:Connection.Thing.ThingTypeName}"),
    (with_stmt(Resource=f"{ARN}:topic/${{iot:clientid}}"),
     "unsupported policy variable ${iot:clientid}"),
    (with_stmt(Resource=f"{ARN}:topic/${{iot:Connection.Thing.Attributes[]}}"),
     "unsupported policy variable"),
    (with_stmt(Resource=f"{ARN}:topic/${{}}"), "unsupported policy variable ${}"),
])
def test_validation_errors(source, message):
    with pytest.raises(PolicyError) as info:
        Policy.parse(source)
    assert message in str(info.value)


def test_policy_error_is_value_error_and_names_policy_and_path():
    with pytest.raises(ValueError) as info:
        Policy.parse(with_stmt(Effect="allow"), name="fleet")
    err = info.value
    assert isinstance(err, PolicyError)
    assert err.policy == "fleet" and err.path == "Statement[1].Effect"
    assert str(err) == ("policy 'fleet': Statement[1].Effect: "
                        'must be "Allow" or "Deny", got "allow"')


def test_document_size_limit_excludes_whitespace():
    def sized(n: int) -> str:
        base = json.dumps(doc(allow("iot:Publish", f"{ARN}:topic/")), separators=(",", ":"))
        text = base.replace("topic/", "topic/" + "x" * (n - len(base)))
        assert len(text) == n
        return text

    Policy.parse(sized(MAX_POLICY_CHARS))
    with pytest.raises(PolicyError, match="document: 2049 characters excluding whitespace, "
                                          "more than the 2048 allowed"):
        Policy.parse(sized(MAX_POLICY_CHARS + 1))
    # Whitespace does not count...
    spaced = json.dumps(json.loads(sized(MAX_POLICY_CHARS)), indent=8)
    assert len(spaced) > MAX_POLICY_CHARS
    Policy.parse(spaced)
    # ...the limit applies to mappings too, and can be lifted.
    big = json.loads(sized(MAX_POLICY_CHARS + 1))
    with pytest.raises(PolicyError, match="document: 2049 characters"):
        Policy.parse(big)
    Policy.parse(big, max_chars=None)


def test_too_many_statements():
    many = doc(*[allow("iot:Publish", f"{ARN}:topic/{i}") for i in range(101)])
    with pytest.raises(PolicyError, match="Statement: 101 statements, more than the 100 allowed"):
        Policy.parse(many, max_chars=None)
    Policy.parse(many, max_chars=None, max_statements=None)
    with pytest.raises(PolicyError, match="3 statements, more than the 2 allowed"):
        Policy.parse(doc(GOOD, GOOD, GOOD), max_statements=2)


def test_document_limits_are_checked_before_json_parsing():
    with pytest.raises(PolicyError, match="characters excluding whitespace"):
        Policy.parse("[" * 100_000)


# --------------------------------------------------------------------------- evaluation


def test_allow_and_deny_by_topic():
    p = pol(allow("iot:Publish", [f"{ARN}:topic/a/b", f"{ARN}:topic/c"]),
            deny("iot:Publish", f"{ARN}:topic/c"))
    assert allowed(p, PUBLISH, "a/b")
    assert not allowed(p, PUBLISH, "a/b/c")
    assert not allowed(p, PUBLISH, "a")
    assert not allowed(p, PUBLISH, "c")                 # the Deny wins in the same policy
    assert not allowed(p, RECEIVE, "a/b")               # another action: not granted


def test_deny_by_default():
    assert not allowed([], PUBLISH, "a")
    assert not allowed([], CONNECT, "dev1")
    d = ENGINE.explain([], SUBSCRIBE, CTX, "a/#")
    assert not d.allowed and d.statement is None and d.effect is None
    assert str(d) == (f"denied iot:Subscribe on {ARN}:topicfilter/a/#: no statement allows it "
                      "(denied by default)")


def test_explicit_deny_wins_across_policies():
    grant = pol(allow("iot:*", "*"), name="grant")
    block = pol(deny("iot:Publish", f"{ARN}:topic/secret/*"), name="block")
    for order in ([grant, block], [block, grant]):
        assert not allowed(order, PUBLISH, "secret/x")
        assert allowed(order, PUBLISH, "public/x")
        assert allowed(order, RECEIVE, "secret/x")        # only Publish is denied
        d = ENGINE.explain(order, PUBLISH, CTX, "secret/x")
        assert (d.allowed, d.policy, d.statement, d.effect) == (False, "block",
                                                                 "Statement[0]", "Deny")


def test_union_of_attached_policies():
    a = pol(allow("iot:Publish", f"{ARN}:topic/a"), name="a")
    b = pol(allow("iot:Publish", f"{ARN}:topic/b"), name="b")
    assert allowed([a, b], PUBLISH, "a") and allowed([a, b], PUBLISH, "b")
    assert not allowed([a], PUBLISH, "b")
    assert ENGINE.explain([a, b], PUBLISH, CTX, "b").policy == "b"


def test_resource_type_follows_the_action():
    p = pol(allow("iot:*", [f"{ARN}:client/dev1", f"{ARN}:topic/t", f"{ARN}:topicfilter/f"]))
    assert allowed(p, CONNECT, "dev1")
    assert not allowed(p, CONNECT, "t") and not allowed(p, CONNECT, "f")
    for action in (PUBLISH, RECEIVE, RETAIN_PUBLISH):
        assert allowed(p, action, "t")
        assert not allowed(p, action, "f") and not allowed(p, action, "dev1")
    assert allowed(p, SUBSCRIBE, "f")
    assert not allowed(p, SUBSCRIBE, "t")


@pytest.mark.parametrize("resource, target, expected", [
    ("topic/a/*", "a/b", True),
    ("topic/a/*", "a/b/c/d", True),                 # * spans levels
    ("topic/a/*", "a/", True),                      # * matches nothing too
    ("topic/a/*", "a", False),
    ("topic/*/b", "x/y/b", True),
    ("topic/*", "", True),
    ("topic/a?", "ab", True),
    ("topic/a?", "a", False),                       # ? is exactly one character
    ("topic/a?", "abc", False),
    ("topic/a?c", "a/c", True),                     # ...any character, / included
    ("topic/??", "ab", True),
    ("topic/*a*a*", "xaya", True),
    ("topic/*a*a*", "xay", False),
    ("topic/x*", "x:y:z", True),                    # colons inside a topic are ordinary
    ("topic/$aws/things/*", "$aws/things/t/shadow/get", True),   # a plain $ is literal
    # MQTT wildcards in a policy are literal characters
    ("topic/a/+", "a/b", False),
    ("topic/a/+", "a/+", True),
    ("topic/a/#", "a/b/c", False),
    ("topic/a/#", "a/#", True),
])
def test_resource_wildcards_publish(resource, target, expected):
    assert allowed(pol(allow("iot:Publish", f"{ARN}:{resource}")), PUBLISH, target) is expected


@pytest.mark.parametrize("resource, topic_filter, expected", [
    ("topicfilter/a/#", "a/#", True),
    ("topicfilter/a/#", "a/b", False),              # not an MQTT match
    ("topicfilter/a/#", "a/+", False),
    ("topicfilter/a/+/c", "a/+/c", True),
    ("topicfilter/a/+/c", "a/b/c", False),
    ("topicfilter/a/*", "a/#", True),               # a policy * covers any filter below a/
    ("topicfilter/a/*", "a/+/c", True),
    ("topicfilter/a/*", "#", False),
    ("topicfilter/*", "#", True),
    ("topicfilter/a/?", "a/+", True),
])
def test_subscribe_topic_filters_are_matched_as_strings(resource, topic_filter, expected):
    p = pol(allow("iot:Subscribe", f"{ARN}:{resource}"))
    assert allowed(p, SUBSCRIBE, topic_filter) is expected


def test_deny_with_mqtt_wildcard_does_not_deny_subtopics():
    """AWS's warning: a Deny on topicfilter/a/# does not stop a subscription to a/b."""
    p = pol(allow("iot:Subscribe", "*"), deny("iot:Subscribe", f"{ARN}:topicfilter/a/#"))
    assert not allowed(p, SUBSCRIBE, "a/#")
    assert allowed(p, SUBSCRIBE, "a/b")
    assert allowed(p, SUBSCRIBE, "a/+")


@pytest.mark.parametrize("arn, expected", [
    ("arn:aws:iot:local:000000000000:topic/t", True),
    ("arn:aws:iot:*:*:topic/t", True),
    ("arn:aws:iot:l?cal:0*0:topic/t", True),
    ("arn:aws:iot:*:000000000000:topic/t", True),
    ("arn:*:iot:local:000000000000:topic/t", True),
    ("arn:aws:iot:us-east-1:000000000000:topic/t", False),
    ("arn:aws:iot:local:123456789012:topic/t", False),
    ("arn:aws:iot::000000000000:topic/t", False),
    ("arn:aws-cn:iot:local:000000000000:topic/t", False),
    ("arn:aws:iot:*:*:*", True),
    ("arn:aws:iot:*:*:t*", True),
    ("arn:aws:iot:*:*:topic*", True),
    ("arn:aws:iot:*:*:client/*", False),
    # cut short by a trailing *: it runs over the remaining segments
    ("arn:aws:iot:*", True),
    ("arn:aws:iot:loc*", True),
    ("arn:aws:iot:local:*", True),
    ("arn:aws:iot:other*", False),
    ("arn:aws:iot:local:1*", False),
])
def test_arn_partition_region_and_account(arn, expected):
    assert allowed(pol(allow("iot:Publish", arn)), PUBLISH, "t") is expected


def test_configured_region_account_partition():
    p = pol(allow("iot:Publish", "arn:aws-cn:iot:cn-north-1:123456789012:topic/t"))
    assert not allowed(p, PUBLISH, "t")
    engine = PolicyEngine(region="cn-north-1", account="123456789012", partition="aws-cn")
    assert allowed(p, PUBLISH, "t", engine=engine)
    assert engine.arn(PUBLISH, "t") == "arn:aws-cn:iot:cn-north-1:123456789012:topic/t"
    with pytest.raises(ValueError):
        PolicyEngine(region="a:b")
    with pytest.raises(ValueError):
        PolicyEngine(account="")


def test_wildcard_in_a_full_arn_does_not_cross_segments():
    """IAM lets a segment-final * run past colons; lichen does not within a full ARN, so a
    topic that merely ends in ':topic/x' is not granted by a policy for topic x."""
    p = pol(allow("iot:Publish", "arn:aws:iot:*:*:topic/x"))
    assert allowed(p, PUBLISH, "x")
    assert not allowed(p, PUBLISH, "y:000000000000:topic/x")
    assert not allowed(p, PUBLISH, "y:topic/x")


def test_star_resource_matches_everything():
    p = pol(allow("iot:*", "*"))
    assert all(allowed(p, a, t) for a in ACTIONS for t in ("", "a/b", "#", "+", "x:y"))


# --------------------------------------------------------------------------- variables


def test_thing_name_variable():
    p = pol(allow("iot:Connect", f"{ARN}:client/${{iot:Connection.Thing.ThingName}}"),
            allow("iot:Publish", f"{ARN}:topic/things/${{iot:Connection.Thing.ThingName}}/*"))
    assert allowed(p, CONNECT, "dev1")
    assert not allowed(p, CONNECT, "dev2")
    assert allowed(p, PUBLISH, "things/dev1/telemetry")
    assert not allowed(p, PUBLISH, "things/dev2/telemetry")
    # No thing attached: the resources match nothing.
    orphan = Context("dev1")
    assert not allowed(p, CONNECT, "dev1", ctx=orphan)
    assert not allowed(p, PUBLISH, "things/dev1/telemetry", ctx=orphan)
    assert not allowed(p, PUBLISH, "things//telemetry", ctx=orphan)
    assert not allowed(p, PUBLISH, "things/${iot:Connection.Thing.ThingName}/x", ctx=orphan)


def test_client_id_variable():
    p = pol(allow(["iot:Publish", "iot:Subscribe"],
                  [f"{ARN}:topic/c/${{iot:ClientId}}", f"{ARN}:topicfilter/c/${{iot:ClientId}}/#"]))
    ctx = Context("sensor-7")
    assert allowed(p, PUBLISH, "c/sensor-7", ctx=ctx)
    assert not allowed(p, PUBLISH, "c/sensor-8", ctx=ctx)
    assert allowed(p, SUBSCRIBE, "c/sensor-7/#", ctx=ctx)
    assert not allowed(p, SUBSCRIBE, "c/+/#", ctx=ctx)


def test_substituted_values_are_literal():
    """A client id of '*' or '+' grants exactly that string, never a wildcard."""
    p = pol(allow(["iot:Publish", "iot:Subscribe"],
                  [f"{ARN}:topic/c/${{iot:ClientId}}", f"{ARN}:topicfilter/c/${{iot:ClientId}}"]))
    star, plus = Context("*"), Context("+")
    assert allowed(p, PUBLISH, "c/*", ctx=star)
    assert not allowed(p, PUBLISH, "c/other", ctx=star)
    assert not allowed(p, PUBLISH, "c/?", ctx=Context("?x"))
    # AWS's own example: client id "+" can subscribe to the literal filter c/+ ...
    assert allowed(p, SUBSCRIBE, "c/+", ctx=plus)
    # ...which is why a policy should pin the client id with iot:Connect.
    assert not allowed(p, SUBSCRIBE, "c/x", ctx=plus)


def test_attribute_variables():
    p = pol(allow("iot:Publish", f"{ARN}:topic/${{iot:Connection.Thing.Attributes[site]}}/"
                                 f"${{iot:Connection.Thing.Attributes[color]}}/*"))
    assert allowed(p, PUBLISH, "s1/red/x")
    assert not allowed(p, PUBLISH, "s1/blue/x")
    no_color = Context("dev1", thing_name="dev1", attributes={"site": "s1"})
    assert not allowed(p, PUBLISH, "s1/red/x", ctx=no_color)
    assert not allowed(p, PUBLISH, "s1//x", ctx=no_color)
    empty = Context("dev1", thing_name="dev1", attributes={"site": "s1", "color": ""})
    assert allowed(p, PUBLISH, "s1//x", ctx=empty)
    # Attributes of a connection without a thing never resolve.
    unattached = Context("dev1", attributes={"site": "s1", "color": "red"})
    assert not allowed(p, PUBLISH, "s1/red/x", ctx=unattached)


def test_missing_variable_in_deny_denies_nothing():
    """As in AWS: a resource whose variable has no value matches nothing, Deny included."""
    p = pol(allow("iot:Publish", "*"),
            deny("iot:Publish", f"{ARN}:topic/${{iot:Connection.Thing.Attributes[locked]}}"))
    locked = Context("d", thing_name="d", attributes={"locked": "vault"})
    assert not allowed(p, PUBLISH, "vault", ctx=locked)
    assert allowed(p, PUBLISH, "vault", ctx=Context("d", thing_name="d"))
    compiled = ENGINE.compile([p], Context("d", thing_name="d"))
    assert compiled.unresolved == (
        f"policy 'p' Statement[1] Resource '{ARN}:topic/${{iot:Connection.Thing.Attributes"
        "[locked]}': ${iot:Connection.Thing.Attributes[locked]} has no value",)


def test_is_attached_variable():
    p = pol(allow("iot:Publish", f"{ARN}:topic/attached/${{iot:Connection.Thing.IsAttached}}"))
    assert allowed(p, PUBLISH, "attached/true")
    assert not allowed(p, PUBLISH, "attached/false")
    assert allowed(p, PUBLISH, "attached/false", ctx=Context("x"))
    assert not allowed(p, PUBLISH, "attached/true", ctx=Context("x"))


def test_special_character_variables():
    p = pol(allow(["iot:Publish", "iot:Subscribe"],
                  [f"{ARN}:topic/a/${{*}}", f"{ARN}:topic/q${{?}}", f"{ARN}:topic/${{$}}{{x}}",
                   f"{ARN}:topicfilter/${{*}}*"]))
    assert allowed(p, PUBLISH, "a/*")
    assert not allowed(p, PUBLISH, "a/b")
    assert allowed(p, PUBLISH, "q?")
    assert not allowed(p, PUBLISH, "qx")
    assert allowed(p, PUBLISH, "${x}")
    assert allowed(p, SUBSCRIBE, "*/anything")
    assert not allowed(p, SUBSCRIBE, "x/anything")


def test_default_device_policy():
    p = Policy.parse(DEVICE_POLICY, name=DEVICE_POLICY_NAME)
    c = ENGINE.compile([p], Context("dev1", thing_name="dev1"))
    assert c.can_connect()
    assert c.can_publish("things/dev1/temp") and c.can_receive("things/dev1/cmd")
    assert c.can_retain_publish("things/dev1/state")
    assert c.can_subscribe("things/dev1/#")
    assert c.can_publish("$aws/things/dev1/shadow/update")
    assert c.can_subscribe("$aws/things/dev1/shadow/update/accepted")
    assert not c.can_publish("things/dev2/temp")
    assert not c.can_subscribe("things/#")
    assert not c.can_subscribe("#")
    other = ENGINE.compile([p], Context("dev2", thing_name="dev1"))
    assert not other.can_connect()                  # the client id must be the thing name


# --------------------------------------------------------------------------- explain


def test_explain_names_the_deciding_statement():
    grant = pol({"Sid": "pub", **allow("iot:Publish", f"{ARN}:topic/a/*")}, name="grant")
    block = pol(allow("iot:Connect", "*"), deny("iot:Publish", f"{ARN}:topic/a/secret"),
                name="block")
    d = ENGINE.explain([grant, block], PUBLISH, CTX, "a/b")
    assert isinstance(d, Decision)
    assert (d.allowed, d.policy, d.statement, d.effect, d.sid, d.matched) == (
        True, "grant", "Statement[0]", "Allow", "pub", f"{ARN}:topic/a/*")
    assert d.resource == f"{ARN}:topic/a/b" and d.target == "a/b" and d.action == PUBLISH
    assert str(d) == (f"allowed iot:Publish on {ARN}:topic/a/b by policy 'grant' "
                      f"Statement[0] (pub) (Resource '{ARN}:topic/a/*')")
    d = ENGINE.explain([grant, block], PUBLISH, CTX, "a/secret")
    assert (d.allowed, d.policy, d.statement, d.effect) == (False, "block", "Statement[1]",
                                                             "Deny")
    assert str(d) == (f"denied iot:Publish on {ARN}:topic/a/secret by policy 'block' "
                      f"Statement[1] (explicit Deny, Resource '{ARN}:topic/a/secret')")


def test_decision_is_truthy_when_allowed():
    p = pol(allow("iot:Publish", f"{ARN}:topic/a"))
    assert ENGINE.explain([p], PUBLISH, CTX, "a")
    assert not ENGINE.explain([p], PUBLISH, CTX, "b")


def test_parsed_policies_survive_pickle_and_deepcopy():
    p = pol(allow("iot:Publish", f"{ARN}:topic/a?/*/${{iot:ClientId}}"))
    for copy in (pickle.loads(pickle.dumps(p)), copy_module.deepcopy(p)):
        assert copy == p
        assert allowed(copy, PUBLISH, "ab/x/y/dev1") and not allowed(copy, PUBLISH, "a/x/dev1")


def test_unnamed_policies_are_numbered_in_explanations():
    p = Policy.parse(doc(allow("iot:Publish", "*")))
    assert ENGINE.explain([p, p], PUBLISH, CTX, "t").policy == "#0"


def test_unknown_action_is_a_programming_error():
    p = pol(allow("iot:*", "*"))
    with pytest.raises(ValueError, match="unknown action 'iot:publish'"):
        ENGINE.is_allowed([p], "iot:publish", CTX, "t")
    with pytest.raises(ValueError, match="unknown action"):
        ENGINE.compile([p], CTX).is_allowed("iot:GetThingShadow", "t")


# --------------------------------------------------------------------------- compiled sets


def test_compiled_set_implements_broker_permissions():
    p = pol(allow("iot:Connect", f"{ARN}:client/${{iot:ClientId}}"),
            allow(["iot:Publish", "iot:Receive"], f"{ARN}:topic/t/*"),
            allow("iot:Subscribe", f"{ARN}:topicfilter/t/*"),
            allow("iot:RetainPublish", f"{ARN}:topic/t/retained/*"))
    c = ENGINE.compile([p], Context("me"))
    assert isinstance(c, CompiledPolicySet)
    perms: Permissions = c
    assert perms.can_publish("t/x") and not perms.can_publish("u/x")
    assert perms.can_subscribe("t/#") and not perms.can_subscribe("#")
    assert perms.can_receive("t/x") and not perms.can_receive("u")
    assert c.can_connect()
    assert c.can_retain_publish("t/retained/x")
    assert not c.can_retain_publish("t/x")             # no iot:RetainPublish
    only_retain = ENGINE.compile([pol(allow("iot:RetainPublish", "*"))], Context("me"))
    assert not only_retain.can_retain_publish("t")     # iot:Publish is needed too


def test_cache_agrees_with_uncached_and_is_bounded():
    p1 = pol(allow("iot:*", [f"{ARN}:topic/a/*", f"{ARN}:topicfilter/a/?", f"{ARN}:client/*"]),
             deny("iot:Receive", f"{ARN}:topic/a/*x*"), name="one")
    p2 = pol(deny("iot:Subscribe", f"{ARN}:topicfilter/a/#"), name="two")
    c = ENGINE.compile([p1, p2], CTX, cache_size=16)
    targets = ["a/b", "a/x", "a/#", "a/+", "b", "a/", "ax", "a/bx", "dev1", ""]
    for _ in range(3):
        for action in ACTIONS:
            for target in targets:
                cached = c.decide(action, target)
                assert cached == c.decide_uncached(action, target)
                assert cached == ENGINE.explain([p1, p2], action, CTX, target)
                assert c.is_allowed(action, target) is cached.allowed
                assert c.explain(action, target) == cached
    info = c.cache_info()
    assert info.maxsize == 16 and info.currsize <= 16 and info.hits > 0
    c.cache_clear()
    assert c.cache_info().currsize == 0


def test_cache_hit_returns_same_decision_object():
    c = ENGINE.compile([pol(allow("iot:Publish", "*"))], CTX)
    first = c.decide(PUBLISH, "x")
    assert c.decide(PUBLISH, "x") is first
    assert c.cache_info().hits == 1
    assert ENGINE.compile([], CTX, cache_size=0).cache_info().maxsize == 0


def test_pathological_pattern_stays_fast():
    """Matching never backtracks: many stars against a long topic from a device stay cheap."""
    p = pol(allow("iot:Publish", f"{ARN}:topic/" + "*a" * 30 + "*b"))
    c = ENGINE.compile([p], CTX, cache_size=0)
    topic = "a" * 60_000
    start = time.perf_counter()
    assert not c.can_publish(topic)
    assert c.can_publish(topic + "b")
    assert time.perf_counter() - start < 2.0


# --------------------------------------------------------------------------- reference model
#
# A deliberately naive model of the documented semantics: policies are generated as lists of
# pieces (so the model needs no parser), variables are substituted piece by piece, and a
# recursive matcher compares pattern characters to the target one at a time.

REGION, ACCOUNT = "local", "000000000000"
VARIABLES = {
    "${iot:ClientId}": lambda c: c.client_id,
    "${iot:Connection.Thing.ThingName}": lambda c: c.thing_name,
    "${iot:Connection.Thing.IsAttached}": lambda c: "true" if c.thing_name is not None
    else "false",
    "${iot:Connection.Thing.Attributes[color]}": lambda c: c.attributes.get("color")
    if c.thing_name is not None else None,
    "${*}": lambda c: "*",
    "${?}": lambda c: "?",
    "${$}": lambda c: "$",
}
TYPES = {CONNECT: "client", PUBLISH: "topic", RECEIVE: "topic", RETAIN_PUBLISH: "topic",
         SUBSCRIBE: "topicfilter"}


def ref_match(pattern: list[tuple[str, bool]], text: str) -> bool:
    """pattern: (character, is_wildcard) pairs."""

    @cache
    def m(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(text)
        ch, wild = pattern[i]
        if wild and ch == "*":
            return m(i + 1, j) or (j < len(text) and m(i, j + 1))
        if j == len(text):
            return False
        if wild and ch == "?":
            return m(i + 1, j + 1)
        return ch == text[j] and m(i + 1, j + 1)

    return m(0, 0)


def ref_plain(pattern: str) -> list[tuple[str, bool]]:
    return [(c, c in "*?") for c in pattern]


def ref_pieces(pieces: list[str], ctx: Context) -> list[tuple[str, bool]] | None:
    out: list[tuple[str, bool]] = []
    for piece in pieces:
        if piece in VARIABLES:
            value = VARIABLES[piece](ctx)
            if value is None:
                return None
            out.extend((c, False) for c in value)
        else:
            out.extend(ref_plain(piece))
    return out


def ref_resource_matches(res: tuple, ctx: Context, action: str, target: str) -> bool:
    kind = res[0]
    name = f"{TYPES[action]}/{target}"
    if kind == "any":
        return True
    if kind == "short":              # ("short", [partition, "iot", ...]), cut short by a *
        segments = res[1]
        fixed = ["aws", "iot", REGION, ACCOUNT]
        for seg, value in zip(segments[:-1], fixed, strict=False):
            if not ref_match(ref_plain(seg), value):
                return False
        rest = ":".join(fixed[len(segments) - 1:]) + ":" + name
        return ref_match(ref_plain(segments[-1]), rest)
    _, partition, region, account, pieces = res
    if not (ref_match(ref_plain(partition), "aws") and ref_match(ref_plain(region), REGION)
            and ref_match(ref_plain(account), ACCOUNT)):
        return False
    pattern = ref_pieces(pieces, ctx)
    return pattern is not None and ref_match(pattern, name)


def ref_is_allowed(policies: list[list[tuple]], action: str, ctx: Context, target: str) -> bool:
    verdicts = set()
    for statements in policies:
        for effect, actions, resources in statements:
            if not any(ref_match(ref_plain(a.lower()), action.lower()) for a in actions):
                continue
            if any(ref_resource_matches(r, ctx, action, target) for r in resources):
                verdicts.add(effect)
    return "Allow" in verdicts and "Deny" not in verdicts


def resource_text(res: tuple) -> str:
    if res[0] == "any":
        return "*"
    if res[0] == "short":
        return "arn:" + ":".join(res[1])
    _, partition, region, account, pieces = res
    return f"arn:{partition}:iot:{region}:{account}:" + "".join(pieces)


CHARS = "ab/+#*?:$"
piece = st.one_of(st.sampled_from(list(CHARS)), st.sampled_from(list(VARIABLES)))
full_resource = st.tuples(
    st.just("full"),
    st.sampled_from(["aws", "*", "a?s", "aws-cn"]),
    st.sampled_from(["local", "*", "l?cal", "lo*", "us-east-1", "*l"]),
    st.sampled_from(["000000000000", "*", "0*0", "1*"]),
    st.builds(lambda head, tail: [head, *tail],
              st.sampled_from(["topic/", "topicfilter/", "client/", "*", "t*", "topic?"]),
              st.lists(piece, max_size=6)),
)
short_resource = st.sampled_from([
    ("short", ["aws", "iot", "*"]), ("short", ["aws", "iot", "lo*"]),
    ("short", ["aws", "iot", "local", "*"]), ("short", ["*", "iot", "x*"]),
    ("short", ["aws", "iot", "local", "0*"]), ("short", ["aws", "iot", "l?cal", "1*"]),
])
resource = st.one_of(full_resource, full_resource, full_resource, short_resource,
                     st.just(("any",)))
action_pattern = st.sampled_from([*ACTIONS, "iot:*", "iot:*Publish", "*", "IOT:receive",
                                  "iot:?ublish", "iot:Sub*"])
statement = st.tuples(st.sampled_from(["Allow", "Deny"]),
                      st.lists(action_pattern, min_size=1, max_size=3),
                      st.lists(resource, min_size=1, max_size=3))
policies = st.lists(st.lists(statement, min_size=1, max_size=4), max_size=3)
small_text = st.text(alphabet=CHARS, max_size=6)
contexts = st.builds(
    Context,
    client_id=st.text(alphabet="ab*+/", max_size=3),
    thing_name=st.none() | st.text(alphabet="ab:", min_size=1, max_size=3),
    attributes=st.dictionaries(st.just("color"), st.text(alphabet="ab*/", max_size=2)),
)


def to_policy(statements: list[tuple], n: int) -> Policy:
    return Policy.parse(doc(*[
        {"Effect": effect, "Action": actions, "Resource": [resource_text(r) for r in resources]}
        for effect, actions, resources in statements
    ]), name=f"p{n}", max_chars=None)


@settings(max_examples=400, deadline=None)
@given(policies=policies, ctx=contexts,
       requests=st.lists(st.tuples(st.sampled_from(ACTIONS), small_text), min_size=1,
                         max_size=8))
def test_engine_agrees_with_naive_reference(policies, ctx, requests):
    parsed = [to_policy(p, n) for n, p in enumerate(policies)]
    compiled = ENGINE.compile(parsed, ctx, cache_size=4)
    for action, target in requests:
        for tgt in (target, ctx.client_id, f"{target}{ctx.thing_name or ''}"):
            expected = ref_is_allowed(policies, action, ctx, tgt)
            assert ENGINE.is_allowed(parsed, action, ctx, tgt) is expected, (action, tgt)
            assert compiled.is_allowed(action, tgt) is expected, (action, tgt)
            assert compiled.is_allowed(action, tgt) is expected          # from the cache
            decision = compiled.decide(action, tgt)
            if decision.statement is not None:
                assert decision.effect == ("Allow" if expected else "Deny")


@settings(max_examples=600, deadline=None)
@given(pattern=st.text(alphabet="ab/+#*?", max_size=10), target=st.text(alphabet="ab/+#*?",
                                                                         max_size=10))
def test_resource_glob_agrees_with_naive_reference(pattern, target):
    p = Policy.parse(doc(allow("iot:Publish", f"{ARN}:topic/{pattern}")))
    expected = ref_match(ref_plain(f"topic/{pattern}"), f"topic/{target}")
    assert ENGINE.is_allowed([p], PUBLISH, CTX, target) is expected
