"""One registry class behind every ``register_*`` / ``list_*`` / ``create_*`` triple.

``Registry("model")`` keeps ``name -> factory`` (a function or a class) with one set of rules:

* registering a name twice is an error naming the name and where it was first registered;
* :meth:`Registry.names` takes an ``fnmatch`` wildcard (``"resnet*"``, ``"*_cnn"``);
* :meth:`Registry.get` accepts a registered name or the registered factory itself;
* a *lazy* entry (``lazy={"yolo_detector": "snnconv.detection.model"}``) is listed by name
  and its module is imported on the first lookup, so a task's heavy dependencies load only
  when one of its entries is used.
"""
from __future__ import annotations

import fnmatch
import importlib
from typing import Callable, Generic, TypeVar

from .errors import SnnconvError

F = TypeVar("F", bound=Callable)


def _origin(factory: Callable) -> str:
    """Where ``factory`` was defined: ``module.qualname``."""
    name = getattr(factory, "__qualname__", getattr(factory, "__name__", repr(factory)))
    return f"{getattr(factory, '__module__', '?')}.{name}"


class Registry(Generic[F]):
    """``name -> factory`` for one kind of thing (``kind`` names it in error messages).

    Args:
        kind: what the entries are ("model", "dataset", "neuron"), used in messages.
        lazy: ``name -> module`` of entries registered by importing that module on first use.
    """

    def __init__(self, kind: str, lazy: dict[str, str] | None = None) -> None:
        self.kind = kind
        self._factories: dict[str, F] = {}
        self._lazy: dict[str, str] = dict(lazy or {})

    def add(self, name: str, factory: F) -> F:
        """Register ``factory`` under ``name`` and return it.

        Raises:
            SnnconvError: ``name`` is not a non-empty string, or is already registered
                (the message names where it was first registered).
        """
        if not isinstance(name, str) or not name:
            raise SnnconvError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._factories:
            raise SnnconvError(f"{self.kind} {name!r} is already registered by {_origin(self._factories[name])}: "
                               f"pick another name for {_origin(factory)}")
        self._factories[name] = factory
        return factory

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator registering the decorated factory under ``name`` (see :meth:`add`).

        Raises:
            SnnconvError: as :meth:`add`, when the decorator is applied.
        """

        def decorate(factory: F) -> F:
            return self.add(name, factory)

        return decorate

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names (lazy ones included, without importing them) matching the
        ``fnmatch`` wildcard ``pattern``, sorted."""
        return sorted(fnmatch.filter(self._factories.keys() | self._lazy.keys(), pattern))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._factories or name in self._lazy)

    def name_of(self, key: str | F) -> str:
        """The registered name of ``key``: a name (returned as it is) or a registered factory.

        Raises:
            SnnconvError: ``key`` is neither a registered name nor a registered factory.
        """
        if isinstance(key, str):
            self.get(key)
            return key
        for name, factory in self._factories.items():
            if factory is key:
                return name
        raise SnnconvError(f"{_origin(key)} is not a registered {self.kind}: register it with "
                           f"@register_{self.kind.replace(' ', '_')}(name), or pass one of {', '.join(self.names())}")

    def get(self, key: str | F) -> F:
        """The factory registered under the name ``key``, or ``key`` itself when it is a
        registered factory (a function or a class). A lazy name imports its module first.

        Raises:
            SnnconvError: ``key`` is not registered (the message lists the known names), or
                a lazy entry's module did not register it.
        """
        if not isinstance(key, str):
            return self._factories[self.name_of(key)]
        if key not in self._factories and key in self._lazy:
            importlib.import_module(self._lazy[key])
            if key not in self._factories:
                raise SnnconvError(f"module {self._lazy[key]} did not register the {self.kind} {key!r}: "
                                   f"decorate its factory with @register_{self.kind.replace(' ', '_')}")
        if key not in self._factories:
            raise SnnconvError(f"unknown {self.kind} {key!r}: choose one of {', '.join(self.names())}")
        return self._factories[key]
