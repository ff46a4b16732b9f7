"""Hypothesis strategies the fuzz targets share: protobuf messages built from descriptors.

`messages(cls)` draws any message the generated class can hold: every field by its
type (int64 at both ends, enum numbers the .proto never named, text in any script,
empty and long bytes), at most one member of each oneof, nested messages to a bounded
depth. `hints` maps a field name to extra values worth trying (a serial that exists,
a real certificate), so a draw reaches past the first check often enough.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from google.protobuf import descriptor as d
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

M = TypeVar("M", bound=Message)

_INT_RANGES = {
    d.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    d.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}

# Text without surrogates (protobuf strings are UTF-8).
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


def integers(low: int, high: int) -> st.SearchStrategy[int]:
    """Any integer in range, with the ends and the small numbers drawn often."""
    edges = [v for v in (low, high, 0, 1, -1, 2**31 - 1, 2**32, 2**53) if low <= v <= high]
    small_low, small_high = max(low, -300), min(high, 300)
    small = st.integers(small_low, small_high) if small_low <= small_high else st.nothing()
    return st.one_of(st.sampled_from(edges), small, st.integers(low, high))


def _scalar(field: d.FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type in _INT_RANGES:
        return integers(*_INT_RANGES[field.type])
    if field.type == d.FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        named = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(named), integers(-(2**31), 2**31 - 1))
    if field.type == d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == d.FieldDescriptor.TYPE_STRING:
        return TEXT
    if field.type == d.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type in (d.FieldDescriptor.TYPE_DOUBLE, d.FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=False, width=32)
    raise TypeError(f"no strategy for field {field.full_name} of type {field.type}")


def _value(
    field: d.FieldDescriptor, hints: Mapping[str, Sequence[Any]], depth: int
) -> st.SearchStrategy[Any]:
    if field.type == d.FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        return _message(field.message_type, hints, depth + 1)
    values = _scalar(field)
    hinted = hints.get(field.name)
    if hinted:
        return st.one_of(st.sampled_from(list(hinted)), values)
    return values


def _message(
    descriptor: d.Descriptor, hints: Mapping[str, Sequence[Any]], depth: int
) -> st.SearchStrategy[Message]:
    cls: type[Message] = GetMessageClass(descriptor)
    if descriptor.full_name == "google.protobuf.Timestamp":
        # Most in the range a Timestamp may hold (years 1 to 9999), some far outside.
        return st.builds(
            lambda s, n: cls(seconds=s, nanos=n),
            st.one_of(integers(-62_135_596_800, 253_402_300_799), integers(-(2**63), 2**63 - 1)),
            st.one_of(integers(0, 999_999_999), integers(-(2**31), 2**31 - 1)),
        )
    if depth > 4:
        return st.just(cls())
    oneofs = {o.name: list(o.fields) for o in descriptor.oneofs}
    in_oneof = {f.name for fields in oneofs.values() for f in fields}
    plain = [f for f in descriptor.fields if f.name not in in_oneof]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for field in plain:
            if field.is_repeated:
                values = draw(st.lists(_value(field, hints, depth), max_size=3))
                target = getattr(message, field.name)
                if field.type == d.FieldDescriptor.TYPE_MESSAGE:
                    for value in values:
                        target.add().CopyFrom(value)
                else:
                    target.extend(values)
            elif draw(st.booleans()):
                _set(message, field, draw(_value(field, hints, depth)))
        for fields in oneofs.values():
            chosen = draw(st.sampled_from([None, *fields]))
            if chosen is not None:
                _set(message, chosen, draw(_value(chosen, hints, depth)))
        return message

    return build()


def _set(message: Message, field: d.FieldDescriptor, value: Any) -> None:
    if field.type == d.FieldDescriptor.TYPE_MESSAGE:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def messages(
    cls: type[M], hints: Mapping[str, Sequence[Any]] | None = None
) -> st.SearchStrategy[M]:
    """Any message of `cls`; `hints` adds values to try for fields of that name."""
    descriptor: Any = cls.DESCRIPTOR
    return _message(descriptor, hints or {}, 0)  # type: ignore[return-value]
