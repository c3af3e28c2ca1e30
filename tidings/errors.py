"""The one error root of tidings.

Every error tidings raises on purpose derives from `TidingsError`. A subclass's
docstring is its default message; its keyword fields carry the ids an operator
needs (which aggregate, which setting) and are part of `str(error)`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TidingsError(Exception):
    """tidings failed."""

    # The structured fields a subclass adds; a class has its ancestors' too.
    fields: ClassVar[tuple[str, ...]] = ()
    all_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inherited = [name for base in cls.__mro__[1:] for name in vars(base).get("fields", ())]
        cls.all_fields = tuple(dict.fromkeys([*inherited, *vars(cls).get("fields", ())]))

    def __init__(self, message: str | None = None, **fields: Any) -> None:
        unknown = set(fields) - set(self.all_fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no fields {sorted(unknown)}")
        self.message = message or (type(self).__doc__ or "").strip()
        for name in self.all_fields:
            setattr(self, name, fields.get(name))
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class ConfigError(TidingsError):
    """A setting is invalid."""

    fields: ClassVar[tuple[str, ...]] = ("problems",)
    problems: list[str]

    def __str__(self) -> str:
        return "\n".join(self.problems or [self.message])
