"""context.invoke chains are bounded: past max_invoke_depth, or when the called function's
workers are all held by the caller's own chain, the call fails at once with a clear error
instead of recursing until the pool is exhausted or waiting for itself until a timeout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.functions.nesting import ROOT, Lineage, nested_lineage, waits_for_itself
from tests.conftest import BrokerProcess
from tests.functions.conftest import fresh_functions_status

from .conftest import Collector, write_code

CODE = {
    "chain": """
        from gateway.functions.context import FunctionError

        def recurse(event, context):
            n = event.get("n", 0)
            if n >= event.get("stop", 1 << 30):
                return n
            return {"n": n, "inner": context.invoke(context.function_name,
                                                   {**event, "n": n + 1})}

        def polite(event, context):
            try:
                return context.invoke(context.function_name, event)
            except FunctionError as exc:
                return {"refused": str(exc)}

        def batched(events, context):
            out = []
            for event in events:
                try:
                    out.append(context.invoke(context.function_name, event))
                except FunctionError as exc:
                    out.append({"refused": str(exc)})
            return out
    """,
}


def fn(name: str, handler: str, code: Path, **extra: object) -> str:
    lines = [f'[[functions]]\nname = "{name}"\ncode = "{code}"\nhandler = "chain.{handler}"',
             f'triggers = ["in/{name}"]\nresult_topic = "out/{name}"\nerror_topic = "err/{name}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerProcess, Collector]]:
    tmp = tmp_path_factory.mktemp("nesting")
    code = write_code(tmp / "code", CODE)
    config = "".join([
        fn("recurse", "recurse", code, max_concurrency=8, max_invoke_depth=3, timeout_s=20),
        fn("polite", "polite", code),                               # one worker
        fn("batched", "batched", code, lifecycle="pinned", batch_max=4),
    ])
    b = BrokerProcess(tmp / "state", config=config, tls=False).start()
    col = Collector(b.port)
    col.subscribe("out/#", "err/#")
    yield b, col
    col.close()
    assert b.stop() == 0


def test_recursion_past_max_invoke_depth_is_refused(gw) -> None:
    _b, col = gw
    col.publish("in/recurse", {})
    # each level fails in turn, innermost first (nested calls report like any other)
    errors = [col.expect_json("err/recurse") for _ in range(4)]
    assert {e["errorType"] for e in errors} == {"FunctionError"}
    assert all("InvokeDepthExceeded: function recurse invoked 4 calls deep through "
               "context.invoke, past its max_invoke_depth of 3" in e["errorMessage"]
               for e in errors)
    assert errors[-1]["topic"] == "in/recurse"        # the outermost, from the message


def test_a_chain_within_the_limit_runs_and_the_pool_is_free_again(gw) -> None:
    _b, col = gw
    col.publish("in/recurse", {"stop": 3})          # depth 3: the limit itself
    results = [col.expect_json("out/recurse") for _ in range(4)]   # innermost first
    assert results[-1] == {"n": 0, "inner": {"n": 1, "inner": {"n": 2, "inner": 3}}}
    col.publish("in/recurse", {"stop": 0})
    assert col.expect_json("out/recurse") == 0


def test_a_call_that_would_wait_for_itself_fails_at_once(gw) -> None:
    _b, col = gw
    col.publish("in/polite", {"x": 1})              # max_concurrency 1: it holds the worker
    refused = col.expect_json("out/polite")["refused"]
    assert refused.startswith("polite: InvokeDeadlock: function polite: all 1 of its "
                              "workers are running this call's own callers")
    col.publish("in/polite", {"x": 2})              # and it serves the next one
    assert "refused" in col.expect_json("out/polite")


def test_a_batch_invoking_its_own_function_fails_at_once(gw) -> None:
    _b, col = gw
    for i in range(2):
        col.publish("in/batched", {"i": i})
    got = [col.expect_json("out/batched")["refused"] for _ in range(2)]
    assert all("InvokeDeadlock: function batched: all 1 of its workers" in r for r in got)


def test_refused_calls_are_counted(gw) -> None:
    b, _col = gw
    functions = fresh_functions_status(b)
    assert functions["recurse"]["invokes_refused"] >= 1
    assert functions["polite"]["invokes_refused"] >= 1
    assert functions["polite"]["running"] == 0              # nothing left waiting


@dataclass
class Call:
    request_id: str
    lineage: Lineage = ROOT


def test_lineage_of_nested_calls() -> None:
    one = nested_lineage([Call("a")])
    assert one == Lineage(1, frozenset({"a"}))
    two = nested_lineage([Call("b", one)])
    assert two == Lineage(2, frozenset({"a", "b"}))
    batch = nested_lineage([Call("c"), Call("d", two)])       # on behalf of the whole batch
    assert batch == Lineage(3, frozenset({"a", "b", "c", "d"}))


def test_waits_for_itself_only_when_every_worker_is_the_chain() -> None:
    chain = frozenset({"a", "b"})
    assert waits_for_itself([[Call("a")], [Call("x"), Call("b")]], chain)
    assert not waits_for_itself([[Call("a")], None], chain)          # a free worker
    assert not waits_for_itself([[Call("a")], [Call("x")]], chain)   # x will finish
