"""The size and range limits on what a client sends, one set for every server.

Every request message is walked against its descriptor (`message_problem`): strings,
repeated fields, enum values and integers, at any depth. What a server stores or caches
(graphs, ids, node ids, reasons) is bounded here once, so no validator keeps its own copy;
a service's own rules (id formats, graph node counts from its config) come on top.

A problem names the field in proto terms (`graph.nodes[3].node_id`) so a client knows what
to fix; servers answer it with INVALID_ARGUMENT (unary requests: esper.runtime.requests)
or, inside a Tamiyo Session, drop the message with a SessionWarning.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from esper.runtime.errors import InvalidArgument

# Ids a client chooses or echoes (run, node, slot, seed, decision, layer ids): the id rules
# of esper.leyline and each service are stricter; this bounds every field ending in `_id`.
MAX_ID_LENGTH = 256
# Any other string (op types, devices, reasons, rationales, free text), in characters.
MAX_STRING_LENGTH = 16_384
# Entries of any one repeated or map field; services bound their own (graph nodes) tighter.
MAX_REPEATED = 65_536
# Largest integer stored anywhere: PostgreSQL's BIGINT, which uint64 fields would overflow.
# Caps (fields named max_*) are exempt: a cap beyond any real value reads as "unbounded".
INT64_MAX = 2**63 - 1
# Steps, epochs and sequence numbers: exact in a float64 and far from overflowing when a
# decision's expiry (step + horizon) is computed; 2^53 steps is beyond any real run.
MAX_COUNTER = 2**53
# Fields counted as steps/epochs/sequences (by name) and so held to MAX_COUNTER.
_COUNTER_NAMES = frozenset({"step", "epoch", "sequence"})
_COUNTER_SUFFIXES = ("_step", "_steps", "_epoch", "_epochs", "_sequence")

_INTEGER_TYPES = frozenset({
    FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
})

# Problem kinds; a Session warning takes its code from them.
OVERSIZED = "oversized"
INVALID_FIELD = "invalid_field"


@dataclass(frozen=True)
class Problem:
    """Why a message is refused: `field` in proto terms, `why` for a person, `kind` for code."""

    field: str
    why: str
    kind: str = INVALID_FIELD

    def error(self) -> InvalidArgument:
        return InvalidArgument(self.field, self.why)

    @property
    def detail(self) -> str:
        return f"{self.field}: {self.why}"


def is_counter(name: str) -> bool:
    return name in _COUNTER_NAMES or name.endswith(_COUNTER_SUFFIXES)


def string_problem(path: str, name: str, value: str) -> Problem | None:
    limit = MAX_ID_LENGTH if name.endswith("_id") else MAX_STRING_LENGTH
    if len(value) > limit:
        return Problem(path, f"{len(value)} characters exceed the limit of {limit}", OVERSIZED)
    if "\x00" in value:  # PostgreSQL's text cannot hold it, and no id or label needs it
        return Problem(path, "must not contain a NUL character")
    return None


def integer_problem(path: str, name: str, value: int) -> Problem | None:
    if name.startswith("max_") and not is_counter(name):
        return None  # a cap: one beyond any real value means "unbounded" (Urza's search, budgets)
    limit = MAX_COUNTER if is_counter(name) else INT64_MAX
    if value > limit or value < -limit:
        return Problem(path, f"{value} is out of range (at most {limit})")
    return None


def _scalar_problem(path: str, field: FieldDescriptor, value: object) -> Problem | None:
    if field.type == FieldDescriptor.TYPE_STRING:
        return string_problem(path, field.name, value)  # type: ignore[arg-type]
    if field.type == FieldDescriptor.TYPE_ENUM:
        if field.enum_type.values_by_number.get(value) is None:  # type: ignore[arg-type]
            return Problem(path, f"{value} is not a {field.enum_type.name} value")
        return None
    if field.type in _INTEGER_TYPES:
        return integer_problem(path, field.name, value)  # type: ignore[arg-type]
    return None


def _value_problem(path: str, field: FieldDescriptor, value: object) -> Problem | None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _first_problem(value, path)  # type: ignore[arg-type]
    return _scalar_problem(path, field, value)


def _map_problem(path: str, field: FieldDescriptor, value) -> Problem | None:
    key_field = field.message_type.fields_by_name["key"]
    value_field = field.message_type.fields_by_name["value"]
    for key, item in value.items():
        entry = f"{path}[{key!r}]"
        problem = _scalar_problem(f"{path} key", key_field, key) or _value_problem(entry, value_field, item)
        if problem:
            return problem
    return None


def message_problem(message: Message, path: str = "") -> Problem | None:
    """The first field of `message` (at any depth) beyond the limits, or None."""
    if _within(message):  # every message a server reads passes here: the common case first
        return None
    return _first_problem(message, path)


# What `_first_problem` checks of a field, decided once per field (`_rule`): a fast walk for
# messages within the limits, which builds no field paths; a message it does not pass is
# walked again by `_first_problem`, which names the field.
_SKIP, _MESSAGE, _MAP, _STRING, _ENUM, _INTEGER = range(6)


@functools.cache
def _rule(field: FieldDescriptor) -> tuple[int, Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return (_MAP, None) if field.is_repeated and field.message_type.GetOptions().map_entry else (_MESSAGE, None)
    if field.type == FieldDescriptor.TYPE_STRING:
        return _STRING, MAX_ID_LENGTH if field.name.endswith("_id") else MAX_STRING_LENGTH
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _ENUM, field.enum_type.values_by_number
    if field.type in _INTEGER_TYPES and not (field.name.startswith("max_") and not is_counter(field.name)):
        return _INTEGER, MAX_COUNTER if is_counter(field.name) else INT64_MAX
    return _SKIP, None


@functools.cache
def _checked(descriptor: Descriptor) -> bool:
    """Whether any field of this message type, at any depth, has a limit (floats and bools
    have none: TrainingMetrics is passed without listing its fields)."""
    return _has_limits(descriptor, frozenset())


def _has_limits(descriptor: Descriptor, visiting: frozenset) -> bool:
    if descriptor in visiting:  # a recursive type: say yes, and its fields are listed
        return True
    inner = visiting | {descriptor}
    return any(field.is_repeated or _rule(field)[0] not in (_SKIP, _MESSAGE)
               or (_rule(field)[0] == _MESSAGE and _has_limits(field.message_type, inner))
               for field in descriptor.fields)


def _within(message: Message) -> bool:
    """True when `_first_problem` would find nothing (False: maybe it would)."""
    if not _checked(message.DESCRIPTOR):
        return True
    for field, value in message.ListFields():
        kind, limit = _rule(field)
        if field.is_repeated:
            if len(value) > MAX_REPEATED or kind == _MAP:  # maps: the full walk decides
                return False
            if kind != _SKIP and not all(_value_within(kind, limit, item) for item in value):
                return False
        elif not _value_within(kind, limit, value):
            return False
    return True


def _value_within(kind: int, limit: Any, value: Any) -> bool:
    if kind == _MESSAGE:
        return _within(value)
    if kind == _STRING:
        return len(value) <= limit and "\x00" not in value
    if kind == _ENUM:
        return value in limit
    if kind == _INTEGER:
        return -limit <= value <= limit
    return True


def _first_problem(message: Message, path: str = "") -> Problem | None:
    for field, value in message.ListFields():
        where = f"{path}.{field.name}" if path else field.name
        if field.is_repeated:
            if len(value) > MAX_REPEATED:
                return Problem(where, f"{len(value)} entries exceed the limit of {MAX_REPEATED}", OVERSIZED)
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                problem = _map_problem(where, field, value)
            else:
                problem = next((p for i, item in enumerate(value)
                                if (p := _value_problem(f"{where}[{i}]", field, item))), None)
        else:
            problem = _value_problem(where, field, value)
        if problem:
            return problem
    return None


def check_message(message: Message, path: str = "") -> None:
    """Raise InvalidArgument naming the first field of `message` beyond the limits."""
    problem = message_problem(message, path)
    if problem:
        raise problem.error()
