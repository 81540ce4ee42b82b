#!/usr/bin/env python3
"""Time lichen's policy decisions on the publish path, in-process, for policy_fanin.

The broker asks a connection's CompiledPolicySet `can_publish(topic)` once per PUBLISH it
receives and the subscriber's `can_receive(topic)` once per delivery. This compiles
bench/bench-policy.json for the load generator's client ids and times those two calls on
the fan-in topics (decisions cached, as in the broker: the topics repeat), and the
uncached evaluation for comparison; then can_receive for one subscriber receiving more
distinct topics than the decision cache holds (--many). Prints one JSON line.

    python bench/policy_cost.py [--root CHECKOUT] [--policy FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def best_ns(stmt, number: int, repeat: int = 7) -> float:
    """Nanoseconds per call: the best of `repeat` timings (least disturbed by other load)."""
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", type=Path, default=BENCH_DIR.parent, help="lichen checkout")
    p.add_argument("--policy", type=Path, default=BENCH_DIR / "bench-policy.json")
    p.add_argument("--pubs", type=int, default=4)
    p.add_argument("--number", type=int, default=200_000, help="calls per timing")
    p.add_argument(
        "--many",
        type=int,
        default=2048,
        help="also time can_receive cycling over this many distinct topics (0: skip)",
    )
    args = p.parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    from gateway.auth.policy import Context, Policy, PolicyEngine

    policy = Policy.parse(args.policy.read_text(), name="bench")
    engine = PolicyEngine()
    pid = 4242  # the load generator's ids and topics: lg<pid>-fanin-p<i>, bench/<pid>/fanin/<i>
    pub = engine.compile([policy], Context(client_id=f"lg{pid}-fanin-p0"))
    sub = engine.compile([policy], Context(client_id=f"lg{pid}-fanin-s0"))
    topics = [f"bench/{pid}/fanin/{i}" for i in range(args.pubs)]
    for t in topics:
        assert pub.can_publish(t) and sub.can_receive(t), f"the policy does not allow {t}"
    assert sub.can_subscribe(f"bench/{pid}/fanin/+")
    assert not pub.can_publish(f"bench/{pid}/control/x")

    n = args.number

    def cycle(fn, names: list[str] = topics):
        """A call of fn on the next topic, round robin, as the fan-in publishers send them.
        Each call gets a new str decoded from the packet's bytes, as in the broker, so its
        hash is not cached from the last call."""
        raw = [t.encode() for t in names]
        k = len(raw)
        state = [0]

        def call() -> None:
            i = state[0]
            fn(raw[i].decode())
            state[0] = (i + 1) % k

        return call

    loop_ns = best_ns(cycle(lambda t: None), n)  # the harness and the decoding
    publish_ns = best_ns(cycle(pub.can_publish), n) - loop_ns
    receive_ns = best_ns(cycle(sub.can_receive), n) - loop_ns
    uncached_ns = best_ns(cycle(lambda t: pub.decide_uncached("iot:Publish", t)), n // 4) - loop_ns
    many = {}
    if args.many:
        # one subscriber receiving from many devices' topics (things/<id>/telemetry): more
        # distinct topics than the decision cache holds
        names = [f"bench/{pid}/fanin/dev{i}" for i in range(args.many)]
        wide = engine.compile([policy], Context(client_id=f"lg{pid}-fanin-s0"))
        many_ns = best_ns(cycle(wide.can_receive, names), n // 4) - loop_ns
        info = wide.cache_info()
        many = {
            "many_topics": args.many,
            "many_can_receive_ns": round(many_ns, 1),
            "many_cache_hit_pct": round(100 * info.hits / max(1, info.hits + info.misses), 1),
            "cache_size": info.maxsize,
        }
    print(
        json.dumps(
            {
                "can_publish_ns": round(publish_ns, 1),
                "can_receive_ns": round(receive_ns, 1),
                "per_message_ns": round(publish_ns + receive_ns, 1),
                "uncached_publish_ns": round(uncached_ns, 1),
                **many,
                "statements": len(policy.statements),
                "python": sys.version.split()[0],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
