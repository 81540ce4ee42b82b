"""AWS IoT Device Shadow document semantics, as pure code: every rule and every error the
AWS documentation gives ("Device Shadow service documents", "Interacting with shadows",
"Device Shadow error messages")."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.shadow.document import (
    CLASSIC,
    Limits,
    Shadow,
    ShadowError,
    UpdateRequest,
    apply_update,
    check_names,
    delete_document,
    delta,
    get_document,
    list_document,
    not_found,
    parse_token,
    parse_update,
    state_size,
)

T0, T1, T2 = 1_700_000_000, 1_700_000_100, 1_700_000_200
AWS = Limits()


def req(doc: dict | str | bytes) -> UpdateRequest:
    if isinstance(doc, dict):
        doc = json.dumps(doc)
    if isinstance(doc, str):
        doc = doc.encode()
    return parse_update(doc)


def rejected(payload: dict | str | bytes, limits: Limits = AWS) -> ShadowError:
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    if isinstance(payload, str):
        payload = payload.encode()
    with pytest.raises(ShadowError) as info:
        parse_update(payload, limits)
    return info.value


def update(shadow: Shadow | None, doc: dict, now: int = T0, base: int | None = None,
           limits: Limits = AWS):
    base_version = base if base is not None else (shadow.version if shadow else 0)
    return apply_update(shadow, base_version, req(doc), now, limits)


# ================================================================ request validation


@pytest.mark.parametrize("payload", [b"", b"{", b"not json", b'{"state": {"desired": {"a": 1}}',
                                     b'{"state": {"desired": {"a": NaN}}}',
                                     b'{"state": {"desired": {"a": Infinity}}}',
                                     b"[]", b"42", b'"state"', b"null"])
def test_invalid_json(payload):
    err = rejected(payload)
    assert (err.code, err.message) == (400, "Invalid JSON")


def test_missing_state():
    err = rejected({"clientToken": "t1", "version": 3})
    assert (err.code, err.message, err.client_token) == (400, "Missing required node: state",
                                                         "t1")


@pytest.mark.parametrize("state", ["on", 1, True, [], [{"desired": {}}]])
def test_state_must_be_an_object(state):
    err = rejected({"state": state})
    assert (err.code, err.message) == (400, "State node must be an object")


@pytest.mark.parametrize("section,message", [("desired", "Desired node must be an object"),
                                             ("reported", "Reported node must be an object")])
@pytest.mark.parametrize("value", ["red", 0, False, ["a"]])
def test_desired_and_reported_must_be_objects(section, message, value):
    err = rejected({"state": {section: value}})
    assert (err.code, err.message) == (400, message)


@pytest.mark.parametrize("node", ["delta", "metadata", "Desired", "color"])
def test_state_contains_an_invalid_node(node):
    err = rejected({"state": {"desired": {"a": 1}, node: {}}})
    assert (err.code, err.message) == (400, "State contains an invalid node")


@pytest.mark.parametrize("version", ["3", 3.0, 2.5, -1, True, None, [3], {"v": 3}])
def test_invalid_version(version):
    err = rejected({"state": {"reported": {}}, "version": version, "clientToken": "abc"})
    assert (err.code, err.message, err.client_token) == (400, "Invalid version", "abc")


@pytest.mark.parametrize("token", ["x" * 65, "é" * 33, 17, None, ["a"], {"a": 1}])
def test_invalid_client_token(token):
    err = rejected({"state": {"reported": {}}, "clientToken": token})
    assert (err.code, err.message) == (400, "Invalid clientToken")
    assert err.client_token is None  # an invalid token is not echoed


def test_client_token_of_64_bytes_is_fine():
    assert req({"state": {}, "clientToken": "é" * 32}).client_token == "é" * 32


def nested(levels: int, leaf: object = 1) -> dict:
    value: object = leaf
    for i in reversed(range(levels)):
        value = {f"l{i + 1}": value}
    return value  # type: ignore[return-value]


def test_six_levels_under_desired_are_allowed():
    doc = nested(6)  # desired.l1.l2.l3.l4.l5.l6 = 1
    assert req({"state": {"desired": doc, "reported": doc}}).state["desired"] == doc


@pytest.mark.parametrize("section", ["desired", "reported"])
@pytest.mark.parametrize("value", [nested(7), nested(6, {}), nested(5, [[1]]),
                                   nested(6, [1])])
def test_too_many_levels_of_nesting(section, value):
    err = rejected({"state": {section: value}, "clientToken": "deep"})
    assert err.code == 400
    assert err.message == "JSON contains too many levels of nesting; maximum is 6"
    assert err.client_token == "deep"


def test_nesting_limit_follows_configuration():
    assert rejected({"state": {"desired": nested(3)}}, Limits(max_depth=2)).message == \
        "JSON contains too many levels of nesting; maximum is 2"


def test_pathologically_deep_json_is_refused_not_crashed():
    payload = b'{"state": {"desired": ' + b"[" * 60_000 + b"]" * 60_000 + b"}}"
    err = rejected(payload)
    assert (err.code, err.message) == (400, "JSON contains too many levels of nesting; "
                                            "maximum is 6")


def test_arrays_cannot_hold_null():
    err = rejected({"state": {"desired": {"colors": [None, "RED", "GREEN"]}}})
    assert (err.code, err.message) == (400, "Invalid JSON")


def test_request_above_the_message_size_is_too_large():
    err = rejected(b" " * 131_073)
    assert (err.code, err.message) == (413, "The payload exceeds the maximum size allowed")


def test_non_utf8_is_an_unsupported_media_type():
    err = rejected(b'{"state": {"reported": {"name": "\xff\xfe"}}}')
    assert (err.code, err.message) == \
        (415, "Unsupported documented encoding; supported encoding is UTF-8")


def test_fields_outside_state_are_ignored():
    """A document sent back as GET returned it (metadata, timestamp) is still an update."""
    r = req({"state": {"reported": {"a": 1}}, "metadata": {"x": 1}, "timestamp": 5})
    assert r.state == {"reported": {"a": 1}}


def test_error_document_shape():
    err = ShadowError(409, "Version conflict", "tok")
    assert err.document(T0) == {"code": 409, "message": "Version conflict", "timestamp": T0,
                                "clientToken": "tok"}
    assert ShadowError(500, "Internal service failure").document(T0) == \
        {"code": 500, "message": "Internal service failure", "timestamp": T0}


def test_get_and_delete_payloads_are_lenient_but_echo_the_token():
    assert parse_token(b"") is None
    assert parse_token(b"garbage") is None
    assert parse_token(b"\xff") is None
    assert parse_token(b'{"clientToken": "g1"}') == "g1"
    with pytest.raises(ShadowError) as info:
        parse_token(json.dumps({"clientToken": "x" * 65}).encode())
    assert info.value.message == "Invalid clientToken"


@pytest.mark.parametrize("thing", ["t", "a" * 128, "Thing_1:a-b"])
def test_valid_thing_names(thing):
    check_names(thing)
    check_names(thing, "$named_1:x-y")


@pytest.mark.parametrize("thing,shadow", [("", CLASSIC), ("a" * 129, CLASSIC), ("a.b", CLASSIC),
                                          ("a b", CLASSIC), ("t", "s" * 65), ("t", "bad/name"),
                                          ("t", "sp ace"), ("t", "é")])
def test_invalid_names(thing, shadow):
    with pytest.raises(ShadowError) as info:
        check_names(thing, shadow)
    assert info.value.code == 400


def test_not_found_names_the_shadow():
    assert not_found("lamp", CLASSIC).message == "No shadow exists with name: lamp"
    err = not_found("lamp", "config", "t")
    assert (err.code, err.message, err.client_token) == \
        (404, "No shadow exists with name: config", "t")


# ================================================================ versions and documents


def test_first_update_creates_version_1_and_every_update_adds_one():
    r1 = update(None, {"state": {"desired": {"color": "RED"}}, "clientToken": "a"}, T0)
    assert r1.shadow.version == 1
    r2 = update(r1.shadow, {"state": {"reported": {"color": "RED"}}}, T1)
    assert r2.shadow.version == 2
    assert r2.shadow.state == {"desired": {"color": "RED"}, "reported": {"color": "RED"}}


def test_accepted_document_echoes_the_request_with_metadata():
    r = update(None, {"state": {"desired": {"color": "RED", "engine": None, "seq": [1, 2]}},
                      "clientToken": "tok"}, T0)
    assert r.accepted == {
        "state": {"desired": {"color": "RED", "engine": None, "seq": [1, 2]}},
        "metadata": {"desired": {"color": {"timestamp": T0}, "engine": {"timestamp": T0},
                                 "seq": [{"timestamp": T0}, {"timestamp": T0}]}},
        "version": 1, "timestamp": T0, "clientToken": "tok"}
    assert "clientToken" not in update(None, {"state": {"desired": {"a": 1}}}).accepted


def test_optimistic_locking():
    """The AWS example: version 10 stored, an update naming 9 is refused, 10 is applied."""
    shadow = Shadow({"desired": {"colors": ["RED", "GREEN", "BLUE"]}},
                    {"desired": {"colors": [{"timestamp": T0}] * 3}}, 10)
    with pytest.raises(ShadowError) as info:
        update(shadow, {"state": {"desired": {"colors": ["BLUE"]}}, "version": 9,
                        "clientToken": "426bfd96"})
    assert info.value.document(T1) == {"code": 409, "message": "Version conflict",
                                       "timestamp": T1, "clientToken": "426bfd96"}
    r = update(shadow, {"state": {"desired": {"colors": ["BLUE"]}}, "version": 10})
    assert r.shadow.state == {"desired": {"colors": ["BLUE"]}}
    assert r.shadow.version == 11


def test_a_deleted_shadow_continues_its_version():
    r = update(None, {"state": {"reported": {"a": 1}}, "version": 4}, base=4)
    assert r.shadow.version == 5
    assert r.documents["previous"] is None
    with pytest.raises(ShadowError):
        update(None, {"state": {"reported": {"a": 1}}, "version": 0}, base=4)


def test_documents_carry_previous_and_current():
    r1 = update(None, {"state": {"desired": {"a": 1}}}, T0)
    r2 = update(r1.shadow, {"state": {"reported": {"a": 2}}, "clientToken": "c"}, T1)
    assert r2.documents == {
        "previous": {"state": {"desired": {"a": 1}},
                     "metadata": {"desired": {"a": {"timestamp": T0}}}, "version": 1},
        "current": {"state": {"desired": {"a": 1}, "reported": {"a": 2}},
                    "metadata": {"desired": {"a": {"timestamp": T0}},
                                 "reported": {"a": {"timestamp": T1}}}, "version": 2},
        "timestamp": T1, "clientToken": "c"}


def test_get_document_has_state_delta_metadata_version():
    r = update(None, {"state": {"desired": {"color": "RED", "state": "STOP"},
                                "reported": {"color": "GREEN", "engine": "ON"}}}, T0)
    assert get_document(r.shadow, T1, "g") == {
        "state": {"desired": {"color": "RED", "state": "STOP"},
                  "reported": {"color": "GREEN", "engine": "ON"},
                  "delta": {"color": "RED", "state": "STOP"}},
        "metadata": {"desired": {"color": {"timestamp": T0}, "state": {"timestamp": T0}},
                     "reported": {"color": {"timestamp": T0}, "engine": {"timestamp": T0}}},
        "version": 1, "timestamp": T1, "clientToken": "g"}


def test_delete_and_list_documents():
    assert delete_document(4, T0) == {"version": 4, "timestamp": T0}
    assert delete_document(4, T0, "d") == {"version": 4, "timestamp": T0, "clientToken": "d"}
    assert list_document(["a", "b"], T0) == {"results": ["a", "b"], "timestamp": T0}


# ================================================================ merging


def test_nested_objects_are_merged():
    r1 = update(None, {"state": {"desired": {"lights": {"color": {"r": 255, "g": 0}},
                                             "engine": "ON"}}}, T0)
    r2 = update(r1.shadow, {"state": {"desired": {"lights": {"color": {"g": 255, "b": 7}}}}},
                T1)
    assert r2.shadow.state["desired"] == {"lights": {"color": {"r": 255, "g": 255, "b": 7}},
                                          "engine": "ON"}
    assert r2.shadow.metadata["desired"] == {
        "lights": {"color": {"r": {"timestamp": T0}, "g": {"timestamp": T1},
                             "b": {"timestamp": T1}}},
        "engine": {"timestamp": T0}}
    # the previous version is left untouched (it is what /documents reports)
    assert r1.shadow.state["desired"]["lights"]["color"] == {"r": 255, "g": 0}


def test_arrays_are_replaced_whole():
    r1 = update(None, {"state": {"desired": {"colors": ["RED", "GREEN", "BLUE"]}}}, T0)
    r2 = update(r1.shadow, {"state": {"desired": {"colors": ["RED"]}}}, T1)
    assert r2.shadow.state == {"desired": {"colors": ["RED"]}}
    assert r2.shadow.metadata == {"desired": {"colors": [{"timestamp": T1}]}}


def test_null_removes_a_field_and_its_metadata():
    r1 = update(None, {"state": {"desired": {"engine": "ON", "color": "RED"}}}, T0)
    r2 = update(r1.shadow, {"state": {"desired": {"engine": None}}}, T1)
    assert r2.shadow.state == {"desired": {"color": "RED"}}
    assert r2.shadow.metadata == {"desired": {"color": {"timestamp": T0}}}


def test_null_removes_nested_fields_and_objects_left_empty():
    r1 = update(None, {"state": {"reported": {"a": {"b": {"c": 1}}, "keep": {}}}}, T0)
    assert r1.shadow.state == {"reported": {"a": {"b": {"c": 1}}, "keep": {}}}
    r2 = update(r1.shadow, {"state": {"reported": {"a": {"b": {"c": None}}}}}, T1)
    assert r2.shadow.state == {"reported": {"keep": {}}}
    assert r2.shadow.metadata == {"reported": {"keep": {}}}


def test_null_for_a_missing_field_changes_nothing_but_the_version():
    r1 = update(None, {"state": {"reported": {"a": 1}}}, T0)
    r2 = update(r1.shadow, {"state": {"reported": {"zzz": None}}}, T1)
    assert r2.shadow.state == r1.shadow.state and r2.shadow.version == 2


def test_a_section_set_to_null_is_removed():
    """The AWS example: a device reports its state and clears desired in one update."""
    r1 = update(None, {"state": {"desired": {"color": "red"}}}, T0)
    r2 = update(r1.shadow, {"state": {"reported": {"color": "red"}, "desired": None}}, T1)
    assert r2.shadow.state == {"reported": {"color": "red"}}
    assert "desired" not in r2.shadow.metadata
    assert r2.accepted["state"] == {"reported": {"color": "red"}, "desired": None}


def test_a_section_emptied_by_nulls_is_removed():
    r1 = update(None, {"state": {"desired": {"a": 1}, "reported": {"a": 1}}}, T0)
    r2 = update(r1.shadow, {"state": {"desired": {"a": None}}}, T1)
    assert r2.shadow.state == {"reported": {"a": 1}}


def test_state_null_empties_the_shadow_but_keeps_it():
    r1 = update(None, {"state": {"desired": {"a": 1}, "reported": {"b": 2}}}, T0)
    r2 = update(r1.shadow, {"state": None, "clientToken": "z"}, T1)
    assert (r2.shadow.state, r2.shadow.metadata, r2.shadow.version) == ({}, {}, 2)
    assert r2.accepted == {"state": None, "version": 2, "timestamp": T1, "clientToken": "z"}
    assert get_document(r2.shadow, T2) == {"state": {}, "metadata": {}, "version": 2,
                                            "timestamp": T2}


def test_values_change_type():
    r1 = update(None, {"state": {"reported": {"a": 5, "b": {"x": 1}}}}, T0)
    r2 = update(r1.shadow, {"state": {"reported": {"a": {"y": 2}, "b": [1]}}}, T1)
    assert r2.shadow.state == {"reported": {"a": {"y": 2}, "b": [1]}}
    assert r2.shadow.metadata == {"reported": {"a": {"y": {"timestamp": T1}},
                                               "b": [{"timestamp": T1}]}}


def test_metadata_of_arrays_of_objects():
    r = update(None, {"state": {"reported": {"s": [{"id": 1}, "x"]}}}, T0)
    assert r.shadow.metadata == {"reported": {"s": [{"id": {"timestamp": T0}},
                                                    {"timestamp": T0}]}}


# ================================================================ size


def test_state_at_the_size_limit_is_accepted_and_one_byte_more_is_not():
    base = {"desired": {"v": ""}}
    room = 8192 - state_size(base)
    r = update(None, {"state": {"desired": {"v": "x" * room}}})
    assert state_size(r.shadow.state) == 8192
    with pytest.raises(ShadowError) as info:
        update(None, {"state": {"desired": {"v": "x" * (room + 1)}}, "clientToken": "big"})
    assert info.value.document(T0) == {"code": 413,
                                       "message": "The payload exceeds the maximum size allowed",
                                       "timestamp": T0, "clientToken": "big"}


def test_size_counts_the_merged_document_not_the_request():
    r1 = update(None, {"state": {"reported": {"a": "x" * 5000}}})
    with pytest.raises(ShadowError) as info:
        update(r1.shadow, {"state": {"reported": {"b": "y" * 5000}}})
    assert info.value.code == 413
    # metadata does not count towards the limit
    many = {f"k{i}": i for i in range(700)}
    r = update(None, {"state": {"reported": many}})
    assert state_size(r.shadow.state) < 8192 < len(json.dumps(r.shadow.metadata))


def test_size_limit_follows_configuration():
    with pytest.raises(ShadowError):
        update(None, {"state": {"reported": {"a": "x" * 200}}}, limits=Limits(200))


# ================================================================ delta


def test_delta_holds_desired_fields_that_differ_or_are_not_reported():
    d, _ = delta({"color": "RED", "state": "STOP"}, {"color": "GREEN", "engine": "ON"})
    assert d == {"color": "RED", "state": "STOP"}


def test_delta_of_nested_objects_keeps_the_path_to_the_root():
    d, _ = delta({"lights": {"color": {"r": 255, "g": 255, "b": 255}}},
                 {"lights": {"color": {"r": 255, "g": 0, "b": 255}}})
    assert d == {"lights": {"color": {"g": 255}}}


def test_delta_compares_arrays_whole():
    assert delta({"c": [1, 2, 3]}, {"c": [1, 2]})[0] == {"c": [1, 2, 3]}
    assert delta({"c": [1, {"a": 2}]}, {"c": [1, {"a": 2}]})[0] == {}
    assert delta({"c": [1, 2]}, {"c": [2, 1]})[0] == {"c": [1, 2]}


def test_delta_uses_json_equality():
    assert delta({"a": True, "b": 1, "c": 1.0, "d": "1"},
                 {"a": 1, "b": 1.0, "c": 1, "d": 1})[0] == {"a": True, "d": "1"}
    assert delta({"a": {}}, {"a": []})[0] == {"a": {}}


def test_delta_metadata_is_the_desired_metadata():
    r1 = update(None, {"state": {"desired": {"lights": {"r": 1, "g": 2}, "x": 1}}}, T0)
    r2 = update(r1.shadow, {"state": {"reported": {"lights": {"r": 1, "g": 0}, "x": 1}}}, T1)
    assert r2.delta == {"version": 2, "timestamp": T1, "state": {"lights": {"g": 2}},
                        "metadata": {"lights": {"g": {"timestamp": T0}}}}


def test_delta_published_only_while_desired_and_reported_differ():
    r1 = update(None, {"state": {"reported": {"a": 1}}}, T0)
    assert r1.delta is None  # no desired section
    r2 = update(r1.shadow, {"state": {"desired": {"a": 2}}, "clientToken": "d"}, T1)
    assert r2.delta == {"version": 2, "timestamp": T1, "state": {"a": 2},
                        "metadata": {"a": {"timestamp": T1}}, "clientToken": "d"}
    r3 = update(r2.shadow, {"state": {"reported": {"a": 2}}}, T2)
    assert r3.delta is None
    # a reported field deleted while still desired shows up in the delta
    r4 = update(r3.shadow, {"state": {"reported": {"a": None}}}, T2)
    assert r4.delta is not None and r4.delta["state"] == {"a": 2}


json_leaf = st.one_of(st.booleans(), st.integers(-5, 5), st.sampled_from(["a", "b", ""]),
                      st.lists(st.integers(0, 3), max_size=3))
json_object = st.recursive(st.dictionaries(st.sampled_from("xyz"), json_leaf, max_size=3),
                           lambda inner: st.dictionaries(st.sampled_from("xyz"),
                                                         st.one_of(json_leaf, inner),
                                                         max_size=3),
                           max_leaves=12)


@given(desired=json_object, reported=json_object)
def test_reporting_the_delta_leaves_no_delta(desired, reported):
    """Whatever the two sides, a device that reports what /delta told it converges."""
    r1 = update(None, {"state": {"desired": desired, "reported": reported}}, T0)
    if r1.delta is None:
        return
    r2 = update(r1.shadow, {"state": {"reported": r1.delta["state"]}}, T1)
    assert r2.delta is None
    assert r2.shadow.state.get("desired", {}) == desired


@pytest.mark.parametrize("token", [None, 'quo"te'])
def test_documents_are_encoded_from_the_stored_json(token):
    r1 = update(None, {"state": {"desired": {"é": [1, {"a": 2}]}}})
    doc = {"state": {"reported": {"x": 1}}}
    if token:
        doc["clientToken"] = token
    r2 = update(r1.shadow, doc, T1)
    assert json.loads(r2.documents_json()) == r2.documents
    assert json.loads(r1.documents_json()) == r1.documents
    again = Shadow.from_json(r2.shadow.to_json(), r2.shadow.version)
    assert again == r2.shadow
