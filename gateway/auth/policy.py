"""AWS IoT Core policies: parse, validate and evaluate them for the MQTT data plane.

A policy is the JSON document AWS IoT Core uses::

    {"Version": "2012-10-17",
     "Statement": [{"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
                    "Resource": "arn:aws:iot:*:*:topic/${iot:Connection.Thing.ThingName}/*"}]}

`Policy.parse` validates a document strictly and raises `PolicyError` naming the statement
and field at fault. `PolicyEngine.compile` turns the policies attached to one connection into
a `CompiledPolicySet`: policy variables are substituted once, every resource pattern becomes a
matcher, and decisions are kept in a bounded LRU cache, because publish and receive checks
run once per message. A `CompiledPolicySet` answers the broker's `Permissions` checks
(`can_publish`, `can_subscribe`, `can_receive`).

Semantics (AWS IoT Core and IAM documentation, and where lichen had to choose):

* Actions: iot:Connect, iot:Publish, iot:Subscribe, iot:Receive and iot:RetainPublish. As in
  IAM, action names are case-insensitive and may use `*` and `?` (`iot:*`, `iot:Pub*`, `*`).
  An action, or an action pattern, that names none of these is refused: lichen does not
  silently ignore permissions it cannot enforce (shadows, jobs, ...).
* Each action is matched against one resource type: iot:Connect against
  `client/<client id>`, iot:Publish, iot:Receive and iot:RetainPublish against
  `topic/<topic name>`, iot:Subscribe against `topicfilter/<topic filter>`.
* In a resource, `*` matches any run of characters (`/` included) and `?` exactly one.
  The MQTT wildcards `+` and `#` have no special meaning: a SUBSCRIBE to `a/#` needs a
  resource matching the literal string `topicfilter/a/#` (for example `topicfilter/a/*`).
* ARNs are `arn:PARTITION:iot:REGION:ACCOUNT:TYPE/NAME`. The partition, region and account
  are compared, segment by segment, with the engine's own (`*` and `?` allowed); the service
  must be `iot`. IAM lets a `*` that ends an ARN segment run on past the colons; lichen honours
  that only for an ARN cut short by it (`arn:aws:iot:*`), never across a complete ARN's
  segments, so `arn:aws:iot:*:*:topic/x` cannot match a topic that merely ends in
  `:topic/x`. A resource that is just `*` matches everything.
* Policy variables: `${iot:ClientId}`, `${iot:Connection.Thing.ThingName}`,
  `${iot:Connection.Thing.Attributes[NAME]}` and `${iot:Connection.Thing.IsAttached}`
  (`true` when the connection is attached to a thing, else `false`); `${*}`, `${?}` and `${$}`
  stand for the literal characters. A substituted value is always literal: a client id of
  `*` matches only `*`. A variable with no value (no thing attached, attribute missing) makes
  that one resource match nothing, as AWS documents ("this variable won't be resolved and
  will result in an access denied error"). Beware that this applies to Deny statements too:
  a Deny whose resource cannot be resolved denies nothing. Variable names are
  case-sensitive; other AWS variables (certificate fields, thing type, ...) are refused.
* Evaluation is AWS's: denied by default; any matching Allow allows; any matching Deny, in
  any attached policy, overrides every Allow.
* Limits: a document may hold at most 2048 characters excluding whitespace (the limit of
  AWS IoT's CreatePolicy and CreatePolicyVersion). AWS documents no limit on the number of
  statements; lichen caps it at `MAX_STATEMENTS`. Only Version "2012-10-17" is accepted
  (older versions do not substitute policy variables). `Condition`, `NotAction`,
  `NotResource` and `Principal` are refused as unsupported.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from ..errors import UserError

__all__ = [
    "ACTIONS", "CONNECT", "PUBLISH", "RECEIVE", "RETAIN_PUBLISH", "SUBSCRIBE",
    "MAX_POLICY_CHARS", "MAX_STATEMENTS", "RESOURCE_TYPES", "VERSION",
    "CompiledPolicySet", "Context", "Decision", "Policy", "PolicyEngine", "PolicyError",
    "Statement",
]

CONNECT: Final = "iot:Connect"
PUBLISH: Final = "iot:Publish"
SUBSCRIBE: Final = "iot:Subscribe"
RECEIVE: Final = "iot:Receive"
RETAIN_PUBLISH: Final = "iot:RetainPublish"
ACTIONS: Final = (CONNECT, PUBLISH, SUBSCRIBE, RECEIVE, RETAIN_PUBLISH)

# The resource type each action is checked against.
RESOURCE_TYPES: Final[Mapping[str, str]] = {
    CONNECT: "client", PUBLISH: "topic", RECEIVE: "topic", RETAIN_PUBLISH: "topic",
    SUBSCRIBE: "topicfilter",
}

VERSION: Final = "2012-10-17"
MAX_POLICY_CHARS: Final = 2048      # AWS IoT: policyDocument, excluding whitespace
MAX_STATEMENTS: Final = 100         # lichen's own cap; AWS documents none
DEFAULT_CACHE_SIZE: Final = 1024

_DOCUMENT_FIELDS = ("Version", "Statement", "Id")
_STATEMENT_FIELDS = ("Effect", "Action", "Resource", "Sid")
_UNSUPPORTED_FIELDS = ("Condition", "NotAction", "NotResource", "Principal", "NotPrincipal")
_ACTION_SYNTAX = re.compile(r"\A(?:\*|[A-Za-z0-9*?-]+:[A-Za-z0-9*?]+)\Z")
_ATTRIBUTE_VARIABLE = re.compile(r"iot:Connection\.Thing\.Attributes\[([^\[\]]+)\]\Z")
_SPECIAL_VARIABLES = {"*": "*", "?": "?", "$": "$"}
_JSON_WHITESPACE = " \t\n\r"


class PolicyError(UserError, ValueError):
    """An invalid policy document. `path` names the part at fault (`Statement[1].Effect`)."""

    def __init__(self, path: str, reason: str, policy: str = "") -> None:
        self.path = path
        self.reason = reason
        self.policy = policy
        where = f"{path}: " if path else ""
        prefix = f"policy {policy!r}: " if policy else ""
        super().__init__(f"{prefix}{where}{reason}")


# ------------------------------------------------------------------------------ patterns


class _Wild:
    """The `*` and `?` of a pattern (two sentinels, hashed by identity: cheap as cache keys)."""

    __slots__ = ("char",)

    def __init__(self, char: str) -> None:
        self.char = char

    def __repr__(self) -> str:
        return f"<{self.char}>"

    def __reduce__(self) -> str:
        return "STAR" if self.char == "*" else "QMARK"     # copies stay the same sentinel


STAR: Final = _Wild("*")
QMARK: Final = _Wild("?")


@dataclass(frozen=True, slots=True)
class _Variable:
    text: str                   # as written between ${ and }
    attribute: str | None = None


_CLIENT_ID = "iot:ClientId"
_THING_NAME = "iot:Connection.Thing.ThingName"
_IS_ATTACHED = "iot:Connection.Thing.IsAttached"

_Token = str | _Wild | _Variable


@dataclass(frozen=True, slots=True)
class _Chunk:
    """A run of literal characters and `?` between two `*`: a fixed number of characters."""

    text: str | None            # when there is no `?`
    regex: re.Pattern[str] | None
    size: int

    @classmethod
    def of(cls, parts: list[str | _Wild]) -> _Chunk:
        if QMARK not in parts:
            text = "".join(p for p in parts if isinstance(p, str))
            return cls(text, None, len(text))
        rx = "".join("." if p is QMARK else re.escape(str(p)) for p in parts)
        size = sum(1 if p is QMARK else len(str(p)) for p in parts)
        return cls(None, re.compile(rx, re.DOTALL), size)

    def match_at(self, s: str, pos: int) -> bool:
        if self.text is not None:
            return s.startswith(self.text, pos)
        return self.regex.match(s, pos) is not None                # type: ignore[union-attr]

    def find(self, s: str, start: int, end: int) -> int:
        if self.text is not None:
            return s.find(self.text, start, end)
        m = self.regex.search(s, start, end)                       # type: ignore[union-attr]
        return -1 if m is None else m.start()


class _Glob:
    """`*`/`?` matching without backtracking: the chunks between stars are placed leftmost,
    which is optimal because each chunk has a fixed length. O(len(s) * len(pattern)) at
    worst, whatever the pattern, so a long topic cannot make matching slow."""

    __slots__ = ("head", "middle", "tail", "min_size")

    def __init__(self, chunks: list[_Chunk]) -> None:
        self.head = chunks[0]
        self.tail = chunks[-1]
        self.middle = [c for c in chunks[1:-1] if c.size]
        self.min_size = sum(c.size for c in chunks)

    def __call__(self, s: str) -> bool:
        n = len(s)
        if n < self.min_size:
            return False
        end = n - self.tail.size
        if not (self.head.match_at(s, 0) and self.tail.match_at(s, end)):
            return False
        pos = self.head.size
        for chunk in self.middle:
            i = chunk.find(s, pos, end)
            if i < 0:
                return False
            pos = i + chunk.size
        return True


def _always(_: str) -> bool:
    return True


@functools.lru_cache(maxsize=4096)
def _glob(tokens: tuple[str | _Wild, ...]) -> Callable[[str], bool]:
    """`_compile_glob`, memoized: connections sharing a policy share its matchers."""
    return _compile_glob(tokens)


def _compile_glob(tokens: Iterable[str | _Wild]) -> Callable[[str], bool]:
    """A matcher for a resolved pattern: literal strings, STAR and QMARK."""
    chunks: list[list[str | _Wild]] = [[]]
    for t in tokens:
        if t is STAR:
            chunks.append([])
        elif t != "":
            chunks[-1].append(t)
    if len(chunks) == 1:                                   # no star: fixed length
        only = _Chunk.of(chunks[0])
        if only.text is not None:
            return only.text.__eq__
        rx = only.regex
        return lambda s: rx.fullmatch(s) is not None       # type: ignore[union-attr]
    compiled = [_Chunk.of(c) for c in chunks]
    if all(c.size == 0 for c in compiled):
        return _always
    if len(compiled) == 2 and compiled[1].size == 0 and compiled[0].text is not None:
        return functools.partial(_startswith, compiled[0].text)
    return _Glob(compiled)


def _startswith(prefix: str, s: str) -> bool:
    return s.startswith(prefix)


def _glob_matches(pattern: str, s: str, *, fold_case: bool = False) -> bool:
    """Match a plain policy string with `*` and `?` (used for action names)."""
    if fold_case:
        pattern, s = pattern.lower(), s.lower()
    tokens: list[str | _Wild] = [STAR if c == "*" else QMARK if c == "?" else c for c in pattern]
    return _compile_glob(tokens)(s)


# ------------------------------------------------------------------------------ documents


@dataclass(frozen=True, slots=True)
class ResourcePattern:
    """One entry of a statement's Resource, tokenized. `segments` is None for `*`."""

    text: str
    segments: tuple[tuple[_Token, ...], ...] | None
    has_variables: bool = False


@dataclass(frozen=True, slots=True)
class Statement:
    path: str                          # "Statement[1]" (or "Statement" when not a list)
    effect: str                        # "Allow" or "Deny"
    actions: frozenset[str]            # the supported actions it covers
    resources: tuple[ResourcePattern, ...]
    sid: str | None = None

    @property
    def allows(self) -> bool:
        return self.effect == "Allow"


class _Object(dict):
    """A JSON object that remembers its duplicated keys, so the error can say where."""

    duplicates: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        duplicates = []
        for key, _ in pairs:
            if key in seen:
                duplicates.append(key)
            seen.add(key)
        obj.duplicates = tuple(duplicates)
    return obj


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _non_whitespace_size(text: str) -> int:
    return len(text) - sum(text.count(c) for c in _JSON_WHITESPACE)


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    statements: tuple[Statement, ...]

    @classmethod
    def parse(cls, source: str | bytes | Mapping[str, Any], name: str = "", *,
              max_chars: int | None = MAX_POLICY_CHARS,
              max_statements: int | None = MAX_STATEMENTS) -> Policy:
        """Parse and validate a policy document (JSON text or an already-decoded object).

        Raises PolicyError. `max_chars` (characters excluding whitespace) and
        `max_statements` may be None for no limit."""
        return _Parser(name, max_chars, max_statements).parse(source)


class _Parser:
    def __init__(self, name: str, max_chars: int | None, max_statements: int | None) -> None:
        self.name = name
        self.max_chars = max_chars
        self.max_statements = max_statements

    def error(self, path: str, reason: str) -> PolicyError:
        return PolicyError(path, reason, self.name)

    def parse(self, source: str | bytes | Mapping[str, Any]) -> Policy:
        if isinstance(source, bytes | bytearray):
            try:
                source = bytes(source).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self.error("document", f"not UTF-8 text ({exc.reason} at byte "
                                             f"{exc.start})") from None
        if isinstance(source, str):
            self.check_size(source)
            try:
                doc = json.loads(source, object_pairs_hook=_object_pairs)
            except json.JSONDecodeError as exc:
                raise self.error("document", f"invalid JSON at line {exc.lineno} column "
                                             f"{exc.colno}: {exc.msg}") from None
            except RecursionError:
                raise self.error("document", "invalid JSON: nested too deeply") from None
        elif isinstance(source, Mapping):
            try:
                self.check_size(json.dumps(source, separators=(",", ":")))
            except (TypeError, ValueError) as exc:
                raise self.error("document", f"not a JSON document: {exc}") from None
            doc = source
        else:
            raise self.error("document", f"must be JSON text or a mapping, got "
                                         f"{type(source).__name__}")
        return Policy(self.name, self.document(doc))

    def check_size(self, text: str) -> None:
        if self.max_chars is None:
            return
        size = _non_whitespace_size(text)
        if size > self.max_chars:
            raise self.error("document", f"{size} characters excluding whitespace, more than "
                                         f"the {self.max_chars} allowed")

    def check_object(self, obj: Any, path: str, allowed: tuple[str, ...],
                     unsupported: tuple[str, ...] = ()) -> None:
        if not isinstance(obj, Mapping):
            raise self.error(path or "document", f"must be a JSON object, got {_show(obj)}")
        duplicates = getattr(obj, "duplicates", ())
        if duplicates:
            raise self.error(path or "document", f"duplicate field {_show(duplicates[0])}")
        for key in obj:
            where = f"{path}.{key}" if path else str(key)
            if key in unsupported:
                raise self.error(where, "not supported by lichen")
            if key not in allowed:
                raise self.error(where, f"unknown field (expected {', '.join(allowed)})")

    def document(self, doc: Any) -> tuple[Statement, ...]:
        self.check_object(doc, "", _DOCUMENT_FIELDS)
        if "Version" not in doc:
            raise self.error("Version", f"missing; must be {_show(VERSION)}")
        if doc["Version"] != VERSION:
            raise self.error("Version", f"must be {_show(VERSION)}, got {_show(doc['Version'])}")
        if "Id" in doc and not isinstance(doc["Id"], str):
            raise self.error("Id", f"must be a string, got {_show(doc['Id'])}")
        if "Statement" not in doc:
            raise self.error("Statement", "missing")
        raw = doc["Statement"]
        if isinstance(raw, Mapping):
            return (self.statement(raw, "Statement"),)
        if not isinstance(raw, list):
            raise self.error("Statement", f"must be an object or a list of objects, got "
                                          f"{_show(raw)}")
        if not raw:
            raise self.error("Statement", "must hold at least one statement")
        if self.max_statements is not None and len(raw) > self.max_statements:
            raise self.error("Statement", f"{len(raw)} statements, more than the "
                                          f"{self.max_statements} allowed")
        return tuple(self.statement(s, f"Statement[{i}]") for i, s in enumerate(raw))

    def statement(self, raw: Any, path: str) -> Statement:
        self.check_object(raw, path, _STATEMENT_FIELDS, _UNSUPPORTED_FIELDS)
        for key in ("Effect", "Action", "Resource"):
            if key not in raw:
                raise self.error(f"{path}.{key}", "missing")
        effect = raw["Effect"]
        if effect not in ("Allow", "Deny"):
            raise self.error(f"{path}.Effect", f'must be "Allow" or "Deny", got {_show(effect)}')
        sid = raw.get("Sid")
        if sid is not None and not isinstance(sid, str):
            raise self.error(f"{path}.Sid", f"must be a string, got {_show(sid)}")
        actions: set[str] = set()
        for where, action in self.strings(raw["Action"], f"{path}.Action"):
            actions.update(self.action(action, where))
        resources = tuple(self.resource(r, where)
                          for where, r in self.strings(raw["Resource"], f"{path}.Resource"))
        return Statement(path, effect, frozenset(actions), resources, sid)

    def strings(self, value: Any, path: str) -> list[tuple[str, str]]:
        """A string or a non-empty list of strings, each with its path."""
        if isinstance(value, str):
            return [(path, value)]
        if not isinstance(value, list):
            raise self.error(path, f"must be a string or a list of strings, got {_show(value)}")
        if not value:
            raise self.error(path, "must not be an empty list")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{path}[{i}]", f"must be a string, got {_show(item)}")
        return [(f"{path}[{i}]", item) for i, item in enumerate(value)]

    def action(self, action: str, path: str) -> list[str]:
        if not _ACTION_SYNTAX.match(action):
            raise self.error(path, f'invalid action {_show(action)}: expected "service:Name" '
                                   f'(as in "iot:Publish"), "*" and "?" allowed')
        covered = [a for a in ACTIONS if _glob_matches(action, a, fold_case=True)]
        if not covered:
            raise self.error(path, f"unsupported action {_show(action)}: lichen enforces "
                                   f"{', '.join(ACTIONS)}")
        return covered

    def resource(self, text: str, path: str) -> ResourcePattern:
        if text == "*":
            return ResourcePattern(text, None)
        segments = self.tokenize(text, path)
        expected = "expected an ARN arn:PARTITION:iot:REGION:ACCOUNT:TYPE/NAME or \"*\""
        if segments[0] != ("arn",) or len(segments) < 3:
            raise self.error(path, f"{_show(text)} is not an ARN: {expected}")
        if segments[2] != ("iot",):
            raise self.error(path, f"{_show(text)}: the ARN's service must be \"iot\"")
        if not segments[1]:
            raise self.error(path, f"{_show(text)}: the ARN's partition is empty")
        if len(segments) < 6:
            if not segments[-1] or segments[-1][-1] is not STAR:
                raise self.error(path, f"{_show(text)} is an incomplete ARN: {expected}")
            return self.pattern(text, segments)
        first = segments[5][0] if segments[5] else ""
        if isinstance(first, str):
            kind, slash, _ = first.partition("/")
            if not slash and len(segments[5]) <= 1:
                raise self.error(path, f"{_show(text)}: the resource must be TYPE/NAME, as in "
                                       f"topic/NAME")
            if slash and kind not in ("client", "topic", "topicfilter"):
                raise self.error(path, f"{_show(text)}: unsupported resource type "
                                       f"{_show(kind)} (lichen knows client, topic and "
                                       f"topicfilter)")
        return self.pattern(text, segments)

    @staticmethod
    def pattern(text: str, segments: tuple[tuple[_Token, ...], ...]) -> ResourcePattern:
        variables = any(isinstance(t, _Variable) for segment in segments for t in segment)
        return ResourcePattern(text, segments, variables)

    def tokenize(self, text: str, path: str) -> tuple[tuple[_Token, ...], ...]:
        """Split an ARN pattern into its six segments (the last keeps any further colons),
        with `*`, `?` and policy variables as tokens."""
        segments: list[list[_Token]] = [[]]
        literal: list[str] = []

        def flush() -> None:
            if literal:
                segments[-1].append("".join(literal))
                literal.clear()

        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c == "$" and text.startswith("${", i):
                end = text.find("}", i + 2)
                if end < 0:
                    raise self.error(path, f"{_show(text)}: policy variable at character {i} "
                                           f"has no closing \"}}\"")
                body = text[i + 2:end]
                if body in _SPECIAL_VARIABLES:
                    literal.append(_SPECIAL_VARIABLES[body])
                else:
                    flush()
                    segments[-1].append(self.variable(body, text, path))
                i = end + 1
                continue
            if c in "*?":
                flush()
                wild = STAR if c == "*" else QMARK
                if not (wild is STAR and segments[-1] and segments[-1][-1] is STAR):
                    segments[-1].append(wild)
            elif c == ":" and len(segments) < 6:
                flush()
                segments.append([])
            else:
                literal.append(c)
            i += 1
        flush()
        return tuple(tuple(s) for s in segments)

    def variable(self, body: str, text: str, path: str) -> _Variable:
        if body in (_CLIENT_ID, _THING_NAME, _IS_ATTACHED):
            return _Variable(body)
        m = _ATTRIBUTE_VARIABLE.match(body)
        if m:
            return _Variable(body, m.group(1))
        raise self.error(path, f"{_show(text)}: unsupported policy variable ${{{body}}} "
                               f"(lichen knows ${{{_CLIENT_ID}}}, ${{{_THING_NAME}}}, "
                               f"${{iot:Connection.Thing.Attributes[NAME]}}, "
                               f"${{{_IS_ATTACHED}}}, ${{*}}, ${{?}} and ${{$}})")


# ------------------------------------------------------------------------------ evaluation


@dataclass(frozen=True, slots=True)
class Context:
    """Who a connection is: what policy variables resolve to."""

    client_id: str
    thing_name: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_attached(self) -> bool:
        return self.thing_name is not None

    def resolve(self, variable: _Variable) -> str | None:
        """The value of a policy variable, or None when it has none."""
        if variable.attribute is not None:
            if self.thing_name is None:
                return None
            value = self.attributes.get(variable.attribute)
            return None if value is None else str(value)
        if variable.text == _CLIENT_ID:
            return self.client_id
        if variable.text == _THING_NAME:
            return self.thing_name
        return "true" if self.is_attached else "false"              # IsAttached


class Decision(NamedTuple):
    """The outcome of one check and the statement that decided it (None: denied by default).
    Truthy when allowed."""

    allowed: bool
    action: str
    target: str
    resource: str                      # the ARN the request was matched as
    policy: str | None = None
    statement: str | None = None       # "Statement[1]"
    effect: str | None = None          # the deciding statement's Effect
    matched: str | None = None         # the Resource entry that matched, as written
    sid: str | None = None

    def __bool__(self) -> bool:
        return self.allowed

    def __str__(self) -> str:
        verdict = "allowed" if self.allowed else "denied"
        head = f"{verdict} {self.action} on {self.resource}"
        if self.statement is None:
            return f"{head}: no statement allows it (denied by default)"
        sid = f" ({self.sid})" if self.sid else ""
        why = "explicit Deny, " if self.effect == "Deny" else ""
        return (f"{head} by policy {self.policy!r} {self.statement}{sid} "
                f"({why}Resource {self.matched!r})")


@dataclass(frozen=True, slots=True)
class _Rule:
    match: Callable[[str], bool]       # called with "TYPE/NAME"
    policy: str
    statement: Statement
    resource: str


class CompiledPolicySet:
    """The policies of one connection, ready for the hot path. Build with
    `PolicyEngine.compile`. Decisions are cached per (action, target) in a bounded LRU."""

    def __init__(self, engine: PolicyEngine, policies: tuple[Policy, ...], context: Context,
                 rules: dict[str, tuple[tuple[_Rule, ...], tuple[_Rule, ...]]],
                 unresolved: tuple[str, ...], cache_size: int) -> None:
        self.engine = engine
        self.policies = policies
        self.context = context
        self.unresolved = unresolved   # resources skipped for a variable with no value
        arn_prefix = engine.arn_prefix

        def evaluate(action: str, target: str) -> Decision:
            try:
                denies, allows = rules[action]
            except KeyError:
                raise ValueError(f"unknown action {action!r}; expected one of "
                                 f"{', '.join(ACTIONS)}") from None
            name = f"{RESOURCE_TYPES[action]}/{target}"
            for rule in denies:
                if rule.match(name):
                    return _decision(False, action, target, arn_prefix + name, rule)
            for rule in allows:
                if rule.match(name):
                    return _decision(True, action, target, arn_prefix + name, rule)
            return Decision(False, action, target, arn_prefix + name)

        self._evaluate = evaluate
        self._decide = functools.lru_cache(maxsize=cache_size)(evaluate)
        # The broker's per-message checks: plain verdict dicts keyed by topic, cheaper than
        # the LRU's tuple keys and Decision objects. Bounded; cleared whole when full.
        self._cache_size = cache_size
        self._publish_ok: dict[str, bool] = {}
        self._receive_ok: dict[str, bool] = {}

    def _verdict(self, memo: dict[str, bool], action: str, target: str) -> bool:
        allowed = self._evaluate(action, target).allowed
        if len(memo) >= self._cache_size:
            memo.clear()
        if self._cache_size:
            memo[target] = allowed
        return allowed

    def decide(self, action: str, target: str) -> Decision:
        """The (cached) decision for `action` on `target`: a client id for iot:Connect, a
        topic for iot:Publish/Receive/RetainPublish, a topic filter for iot:Subscribe."""
        return self._decide(action, target)

    explain = decide

    def decide_uncached(self, action: str, target: str) -> Decision:
        return self._evaluate(action, target)

    def is_allowed(self, action: str, target: str) -> bool:
        return self._decide(action, target).allowed

    def can_connect(self) -> bool:
        return self._decide(CONNECT, self.context.client_id).allowed

    def can_publish(self, topic: str) -> bool:
        allowed = self._publish_ok.get(topic)
        if allowed is None:
            return self._verdict(self._publish_ok, PUBLISH, topic)
        return allowed

    def can_retain_publish(self, topic: str) -> bool:
        """A retained PUBLISH needs both iot:Publish and iot:RetainPublish (AWS)."""
        return self.can_publish(topic) and self._decide(RETAIN_PUBLISH, topic).allowed

    def can_subscribe(self, topic_filter: str) -> bool:
        return self._decide(SUBSCRIBE, topic_filter).allowed

    def can_receive(self, topic: str) -> bool:
        allowed = self._receive_ok.get(topic)
        if allowed is None:
            return self._verdict(self._receive_ok, RECEIVE, topic)
        return allowed

    def cache_info(self) -> functools._CacheInfo:
        return self._decide.cache_info()

    def cache_clear(self) -> None:
        self._decide.cache_clear()
        self._publish_ok.clear()
        self._receive_ok.clear()


def _decision(allowed: bool, action: str, target: str, resource: str, rule: _Rule) -> Decision:
    st = rule.statement
    return Decision(allowed, action, target, resource, rule.policy, st.path, st.effect,
                    rule.resource, st.sid)


class PolicyEngine:
    """Evaluates policies for one gateway: its ARNs are arn:PARTITION:iot:REGION:ACCOUNT:..."""

    def __init__(self, region: str = "local", account: str = "000000000000", *,
                 partition: str = "aws", cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        for label, value in (("partition", partition), ("region", region),
                             ("account", account)):
            if not value or ":" in value:
                raise ValueError(f"invalid {label} {value!r}: non-empty, without ':'")
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self.partition = partition
        self.region = region
        self.account = account
        self.cache_size = cache_size
        self._segments = ("arn", partition, "iot", region, account)
        self.arn_prefix = ":".join(self._segments) + ":"

    def arn(self, action: str, target: str) -> str:
        """The resource ARN a request for `action` on `target` is matched as."""
        return f"{self.arn_prefix}{RESOURCE_TYPES[action]}/{target}"

    def compile(self, policies: Iterable[Policy], context: Context, *,
                cache_size: int | None = None) -> CompiledPolicySet:
        """Substitute the context into the policies and build their matchers, once."""
        policies = tuple(policies)
        denies: dict[str, list[_Rule]] = {a: [] for a in ACTIONS}
        allows: dict[str, list[_Rule]] = {a: [] for a in ACTIONS}
        unresolved: list[str] = []
        for n, policy in enumerate(policies):
            pname = policy.name or f"#{n}"
            for st in policy.statements:
                for res in st.resources:
                    match, missing = self._matcher(res, context)
                    if missing is not None:
                        unresolved.append(f"policy {pname!r} {st.path} Resource "
                                          f"{res.text!r}: ${{{missing}}} has no value")
                    if match is None:
                        continue
                    rule = _Rule(match, pname, st, res.text)
                    for action in st.actions:
                        (allows if st.allows else denies)[action].append(rule)
        rules = {a: (tuple(denies[a]), tuple(allows[a])) for a in ACTIONS}
        size = self.cache_size if cache_size is None else cache_size
        return CompiledPolicySet(self, policies, context, rules, tuple(unresolved), size)

    def _matcher(self, res: ResourcePattern, context: Context
                 ) -> tuple[Callable[[str], bool] | None, str | None]:
        """A matcher over "TYPE/NAME" for this engine, None if the resource cannot match;
        and the name of a variable that had no value."""
        if res.segments is None:
            return _always, None
        resolved: tuple[tuple[str | _Wild, ...], ...] = res.segments       # type: ignore[assignment]
        if res.has_variables:
            substituted = []
            for segment in res.segments:
                out: list[str | _Wild] = []
                for token in segment:
                    if isinstance(token, _Variable):
                        value = context.resolve(token)
                        if value is None:
                            return None, token.text
                        out.append(value)
                    else:
                        out.append(token)
                substituted.append(tuple(out))
            resolved = tuple(substituted)
        last = len(resolved) - 1
        for i in range(1, min(last, 5)):           # partition, (service), region, account
            if not _glob(resolved[i])(self._segments[i]):
                return None, None
        if last == 5:
            return _glob(resolved[5]), None
        # Cut short by a trailing "*": it runs over the rest of the ARN, colons included.
        rest = ":".join(self._segments[last:]) + ":"
        glob = _glob(resolved[last])
        return (lambda name: glob(rest + name)), None

    def explain(self, policies: Iterable[Policy], action: str, context: Context,
                target: str) -> Decision:
        """Evaluate one request without a cache (see `compile` for the hot path)."""
        return self.compile(policies, context, cache_size=0).decide_uncached(action, target)

    def is_allowed(self, policies: Iterable[Policy], action: str, context: Context,
                   target: str) -> bool:
        return self.explain(policies, action, context, target).allowed
