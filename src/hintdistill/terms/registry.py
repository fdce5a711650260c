"""The term registry: every loss term registers itself by its recipe ``type`` with its own schema.

    @register_term("kd")
    class SoftTargetKD(Term):
        class Config(TermConfig):
            temperature: float = Field(4.0, gt=0)

The decorator gives ``Config`` its ``type: Literal["kd"]`` field, so a term-type string is written in
one place; ``config`` builds the recipe's term union from ``registered()``; ``build`` makes a term with
``term_class(cfg.type).from_config(cfg, context)``; the report and viz ask a term's config for its
display text and hint pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import create_model

from ..errors import ConfigError
from ..schema import Strict, Weight

TermClass = TypeVar("TermClass", bound=type)  # a Term subclass (base.py imports this module, not the reverse)


@dataclass(frozen=True)
class HintPair:
    """A teacher ``hint`` layer guiding a student ``guided`` layer through the adapter at ``state_prefix``
    (a prefix of the term's state_dict keys), as viz and the report draw it."""

    hint: str
    guided: str
    adapter: str | None = None
    activation: str = "none"
    resize: str = "interpolate"
    teacher_index: int = 0
    state_prefix: str = ""


def weight_text(weight: Any) -> str:
    """A constant or scheduled weight as the report shows it."""
    if hasattr(weight, "start"):
        return f"{weight.start:g}→{weight.end:g} over {weight.epochs:g} epochs"
    return f"{weight:g}"


class TermConfig(Strict):
    """Base of every term's recipe schema: its ``type`` (set by ``register_term``) and its ``weight``."""

    type: str
    weight: Weight = 1.0

    def term_args(self) -> dict[str, Any]:
        """The fields a term's constructor takes (all but ``type`` and ``weight``)."""
        return {k: getattr(self, k) for k in type(self).model_fields if k not in ("type", "weight")}

    def schedule(self) -> Weight:
        """The weight the Distiller applies (a term may turn its own warm-up into a ``LinearRamp``)."""
        return self.weight

    def describe(self) -> str:
        """One line for the report's stages table."""
        return f"{self.type} ({weight_text(self.schedule())})"

    def hint_pairs(self) -> list[HintPair]:
        """The (hint, guided) layer pairs this term compares through adapters; none by default."""
        return []

    def guided_layer(self) -> str | None:
        """The student layer that ``trainable: up_to_guided`` trains up to, if this term names one."""
        return None


_TERMS: dict[str, type] = {}
_ON_REGISTER: list[Callable[[], None]] = []  # e.g. config rebuilding the recipe schema for a term added later


def register_term(name: str) -> Callable[[TermClass], TermClass]:
    """Class decorator: make a Term usable in recipes as ``type: <name>`` with its nested ``Config`` schema."""

    def deco(cls: TermClass) -> TermClass:
        base = getattr(cls, "Config", None)
        if base is None or not issubclass(base, TermConfig):
            raise TypeError(f"term '{name}' ({cls.__name__}) needs a nested `class Config(TermConfig)` schema")
        if name in _TERMS and _TERMS[name].__qualname__ != cls.__qualname__:
            raise ConfigError(f"term type '{name}' is already registered by {_TERMS[name].__name__}")
        cls.Config = create_model(f"{cls.__name__}Config", __base__=base, __module__=cls.__module__,
                                  __doc__=base.__doc__ or cls.__doc__, type=(Literal[name], ...))
        cls.type_name = name
        _TERMS[name] = cls
        for listener in _ON_REGISTER:
            listener()
        return cls

    return deco


def registered() -> dict[str, type]:
    """Every registered term class by its type name, in registration order (``hintdistill.terms`` imports
    the built-in term files first)."""
    return dict(_TERMS)


def on_register(listener: Callable[[], None]) -> None:
    """Call ``listener()`` after every later registration (``config`` rebuilds its term union)."""
    _ON_REGISTER.append(listener)


def term_class(name: str) -> type:
    """The term class registered as ``name``; an unknown name lists the known ones."""
    known = registered()
    if name not in known:
        raise ConfigError(f"unknown term type '{name}'; known: {', '.join(known)}")
    return known[name]


def term_names(types: Iterable[str]) -> list[str]:
    """The names terms get in a Distiller: the type, and ``kd_1``, ``hint_1``... for a repeated type."""
    names: list[str] = []
    for kind in types:
        name, i = kind, 1
        while name in names:
            name, i = f"{kind}_{i}", i + 1
        names.append(name)
    return names
