"""A named registry of factories, behind every ``register_*`` / ``list_*`` pair.

``Registry("dataset")`` keeps ``name -> factory``; ``register(name)`` is the decorator,
``get(name)`` refuses unknown names with the list of known ones.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import SnnconvError

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """``name -> factory`` for one kind of thing (used in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator registering ``factory`` under ``name``."""

        def decorate(factory: F) -> F:
            self._factories[name] = factory
            return factory

        return decorate

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, name: str) -> F:
        if name not in self._factories:
            raise SnnconvError(f"unknown {self.kind} {name!r}: choose one of {', '.join(self.names())}")
        return self._factories[name]
