"""Hypothesis strategies for any protobuf message, built from its descriptor, that lean on
what breaks servers: empty and huge strings, NUL, path tricks, integer extremes, unknown
enum values, NaN and infinities, nesting and repeated fields. No tests here.

`examples(strategy, n)` draws `n` deterministic examples (hypothesis' own generation,
derandomized, no database) for async tests that send them to real servers.
"""

from __future__ import annotations

import functools

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MAX_DEPTH = 3

NASTY_STRINGS = [
    "", "\x00", "a\x00b", "x" * 300, "x" * 20_000, "../../etc/passwd", "'; DROP TABLE t; --",
    "BP-MLP-GELU@1.0.0", "BP-MLP-GELU@999.0.0", "k-0123456789abcdef", "run-1", "🦀" * 50, "%s%n",
]

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-2**31, 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1), FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-2**63, 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = sorted({v for v in (low, high, 0, 1, -1, 2**31, 2**53 + 1, 2**63) if low <= v <= high})
    return st.one_of(st.sampled_from(edges), st.integers(low, high), st.integers(0, 1000))


def _strings() -> st.SearchStrategy[str]:
    # The nasty values first: hypothesis draws from the first branch more often.
    return st.one_of(st.sampled_from(NASTY_STRINGS), st.text(max_size=16))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return _strings()
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.sampled_from([-1, 99, 999, 2**31 - 1]))
    if t == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if t == FieldDescriptor.TYPE_DOUBLE:
        return st.one_of(st.floats(), st.sampled_from([0.0, -0.0, 1e308, -1e308]))
    return _integers(*_INT_RANGES[t])


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    return _scalar(field)


@functools.cache
def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type; each field set or not, nested up to MAX_DEPTH."""
    cls = GetMessageClass(descriptor)
    if depth >= MAX_DEPTH:
        return st.just(cls())
    parts = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            parts[field.name] = st.dictionaries(_scalar(key), _value(value, depth), max_size=3)
        elif field.is_repeated:
            parts[field.name] = st.lists(_value(field, depth), max_size=3)
        else:
            parts[field.name] = _value(field, depth)
    optional = {name: st.one_of(st.none(), strategy) for name, strategy in parts.items()}
    return st.fixed_dictionaries(optional).map(lambda values: _build(cls, descriptor, values))


def _build(cls, descriptor: Descriptor, values: dict) -> Message:
    message = cls()
    for name, value in values.items():
        if value is None:
            continue
        field = descriptor.fields_by_name[name]
        target = getattr(message, name) if field.type == FieldDescriptor.TYPE_MESSAGE or field.is_repeated else None
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for k, v in value.items():
                if field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            target.extend(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def _leaf_paths(descriptor: Descriptor, depth: int = 0, prefix: tuple = ()):
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth < MAX_DEPTH:
                yield from _leaf_paths(field.message_type, depth + 1, (*prefix, field))
        else:
            yield (*prefix, field)


def _with(base: Message, path: tuple, value) -> Message:
    message = type(base)()
    message.CopyFrom(base)
    target = message
    for field in path[:-1]:
        if field.is_repeated:
            items = getattr(target, field.name)
            target = items[0] if len(items) else items.add()
        else:
            target = getattr(target, field.name)
    leaf = path[-1]
    if leaf.is_repeated:
        items = getattr(target, leaf.name)
        del items[:]
        items.append(value)
    else:
        setattr(target, leaf.name, value)
    return message


def one_field_changed(base: Message) -> st.SearchStrategy[Message]:
    """`base` (a valid request) with one scalar field, at any depth, set to a generated
    value: the nasty value reaches the code behind the request's other checks."""
    paths = list(_leaf_paths(base.DESCRIPTOR))
    return st.sampled_from(paths).flatmap(
        lambda path: _scalar(path[-1]).map(lambda value: _with(base, path, value)))


def examples(strategy: st.SearchStrategy, n: int) -> list:
    """`n` examples of `strategy`, the same ones every run."""
    drawn: list = []

    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value) -> None:
        drawn.append(value)

    collect()
    return drawn[:n]
