"""One registry implementation for everything chosen by name: objectives, feature extractors,
samplers.

A :class:`Registry` maps names to entries (classes or factories). It is a read-only
:class:`~collections.abc.Mapping` — ``name in OBJECTIVES``, ``OBJECTIVES[name]``,
``sorted(OBJECTIVES)`` work as on a dict — and adds the three rules every registry of the toolkit
follows:

- a name is registered once: a second registration raises :class:`~llmfair.errors.ConfigError`
  naming both entries;
- :meth:`Registry.lookup` of an unknown name raises ConfigError listing the registered names;
- :meth:`Registry.names` lists the names in sorted order (what ``--help`` and error messages show).

Usage (what ``register_objective`` does)::

    OBJECTIVES: Registry[type[Objective]] = Registry("objective")

    @OBJECTIVES.decorator("erm", on_register=lambda name, cls: setattr(cls, "name", name))
    class ERM(Objective): ...

    OBJECTIVES.lookup("erm")   # the class; ConfigError "unknown objective 'x'; registered: [...]"

This module is part of the foundation (it imports nothing but :mod:`llmfair.errors`), so every
stage may use it.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Callable, Generic, TypeVar

from llmfair.errors import ConfigError

T = TypeVar("T")


def _describe(entry: object) -> str:
    return getattr(entry, "__name__", None) or repr(entry)


class Registry(Mapping[str, T], Generic[T]):
    """Names → entries, each name registered once (see the module docstring).

    Args:
        kind: what the entries are, as error messages name them ("objective", "sampler", ...).
        name_entries: name both entries in the duplicate-name error ("... registered twice
            (First, Second)"); off for registries whose entries are anonymous factories.
    """

    def __init__(self, kind: str, *, name_entries: bool = True) -> None:
        self.kind = kind
        self.name_entries = name_entries
        self._entries: dict[str, T] = {}

    # ------------------------------------------------------------------ Mapping
    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"

    # ------------------------------------------------------------------ registry
    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def _check_new(self, name: str, entry: T) -> None:
        if not name or not isinstance(name, str):
            raise ConfigError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            both = f" ({_describe(self._entries[name])}, {_describe(entry)})" if self.name_entries else ""
            raise ConfigError(f"{self.kind} {name!r} is registered twice{both}")

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name`` and return it.

        Raises:
            ConfigError: ``name`` is empty or not a string, or already registered.
        """
        self._check_new(name, entry)
        self._entries[name] = entry
        return entry

    def decorator(self, name: str, *, on_register: Callable[[str, T], None] | None = None) -> Callable[[T], T]:
        """A decorator that registers what it decorates under ``name``; ``on_register(name, entry)``
        runs first (e.g. to set the class's ``name`` attribute), only once the name is known good."""

        def wrap(entry: T) -> T:
            self._check_new(name, entry)
            if on_register is not None:
                on_register(name, entry)
            return self.register(name, entry)

        return wrap

    def lookup(self, name: str) -> T:
        """The entry registered under ``name``.

        Raises:
            ConfigError: ``unknown <kind> 'name'; registered: [...]``.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown {self.kind} {name!r}; registered: {self.names()}") from None

    def unregister(self, name: str) -> T:
        """Remove and return an entry (for tests that register a throwaway entry)."""
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; registered: {self.names()}")
        return self._entries.pop(name)
