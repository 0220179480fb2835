"""CLI spellings of Leyline enums: SLOT_KIND_FEATURES is `features` on the command line."""

from __future__ import annotations

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper


def enum_choices(enum: EnumTypeWrapper, prefix: str) -> dict[str, int]:
    """Lower-case names without `prefix` -> values, leaving out the UNSPECIFIED zero."""
    return {enum.Name(v).removeprefix(prefix).lower(): v for v in enum.values() if v}
