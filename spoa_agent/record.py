"""Record: the base of the value objects built for every request (a NOTIFY
and its message, the CheckRequest, the limits' Verdict, the Outcome, an
answer's encoded bytes).

A plain slotted class with an explicit __init__: compiled (setup.py), one
is built and read natively, several times faster than a NamedTuple (whose
__new__ is interpreted Python) or a dataclass. What the NamedTuples these
replaced gave besides, Record gives from the fields a subclass names:
equal when of one class with equal fields, hashable, a readable repr.
Never changed once built.
"""

from __future__ import annotations


class Record:
    __slots__ = ()

    def _fields(self) -> tuple[object, ...]:
        """The field values, in the order of __init__'s parameters."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and isinstance(other, Record) \
            and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self._fields()!r}"
