"""Typed method options: one table per method that validates ``--opt`` and documents it.

Each method declares ``OPTIONS: dict[str, Option]``; :meth:`Option.check` accepts a value when
it is one of the option's literal ``choices`` (compared with their type, so ``True`` is not
``1``) or has the option's ``type`` and lies in its range. ``pyro-clip list options <method>``
prints the same table (:func:`format_table`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyro_clip.errors import ConfigError

#: how each accepted type is named in messages and in ``list options``
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true | false", str: "a string",
               list: "a non-empty list", dict: "a mapping"}
_ITEM_NAMES = {int: "integers", float: "numbers", str: "strings"}


def _literal(value: Any) -> str:
    """A value as a user types it after ``--opt key=`` (YAML spelling)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_literal(v)}" for k, v in value.items()) + "}"
    return str(value)


def _short(value: Any) -> str:
    """``_literal`` with long lists elided to their ends and length."""
    if isinstance(value, list | tuple) and len(value) > 4:
        return f"[{_literal(value[0])}, ..., {_literal(value[-1])}] ({len(value)} values)"
    return _literal(value)


def _describe_value(value: Any) -> str:
    """``'abc' (a string)``: the offending value and its type, for error messages."""
    kind = next((name for t, name in _TYPE_NAMES.items()
                 if type(value) is t), type(value).__name__)
    return f"{_literal(value)!r} ({kind})" if isinstance(value, str) else \
        f"{_literal(value)} ({kind})"


@dataclass(frozen=True)
class Option:
    """One method option: default, meaning, accepted type and range, literal choices.

    A value is valid when it is in ``choices`` or when it has ``type`` and lies in
    ``[low, high]`` (``low_open`` / ``high_open`` make a bound exclusive). For ``type=list``
    every element must have ``item`` type and lie in the range.
    """

    default: Any
    help: str
    type: type | None = None
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    item: type | None = None

    # ----- description -----------------------------------------------------------------
    def range_text(self) -> str:
        """``> 0``, ``>= 1``, ``in (0, 1]`` or ``''`` (no bound)."""
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{_literal(self.low)}, "
                    f"{_literal(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_literal(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_literal(self.high)}"
        return ""

    def allowed(self) -> str:
        """What the option accepts, in words: ``auto | an integer >= 1``."""
        parts = [_literal(c) for c in self.choices]
        if self.type is not None:
            bound = self.range_text()
            if self.type is list:
                items = _ITEM_NAMES.get(self.item, "values")
                parts.append(f"a non-empty list of {items}" + (f" {bound}" if bound else ""))
            else:
                parts.append(_TYPE_NAMES[self.type] + (f" {bound}" if bound else ""))
        return ("one of " if len(parts) > 1 else "") + " | ".join(parts)

    # ----- validation -------------------------------------------------------------------
    def _in_choices(self, value: Any) -> bool:
        return any(value is c or (type(value) is type(c) and value == c) for c in self.choices)

    def _in_range(self, x: float) -> bool:
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return not (self.high is not None and (x >= self.high if self.high_open
                                               else x > self.high))

    def _scalar(self, value: Any, kind: type | None) -> tuple[bool, Any]:
        """``(ok, normalised)`` for one scalar of type ``kind`` (numbers range-checked)."""
        if kind is float:
            if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
                try:
                    value = float(value)
                except ValueError:
                    return False, value
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False, value
            return math.isfinite(value) and self._in_range(value), value
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                return False, value
            return self._in_range(value), value
        if kind is None:
            return False, value
        return isinstance(value, kind), value

    def check(self, key: str, value: Any, owner: str) -> Any:
        """The value, normalised (numeric strings to numbers, tuples to lists); a one-line
        :class:`ConfigError` naming the option, the expected type and range otherwise."""
        if self._in_choices(value):
            return value
        ok, out = False, value
        if self.type is list:
            if isinstance(value, list | tuple) and value:
                checked = [self._scalar(v, self.item) for v in value]
                ok, out = all(c[0] for c in checked), [c[1] for c in checked]
        elif self.type is dict:
            ok = isinstance(value, Mapping)
        else:
            ok, out = self._scalar(value, self.type)
        if not ok:
            raise ConfigError(
                f"{owner}: {key} must be {self.allowed()}, got {_describe_value(value)} "
                f"[{self.help}; default {key}={_literal(self.default)}]")
        return out


def with_defaults(table: Mapping[str, Option], **defaults: Any) -> dict[str, Option]:
    """A copy of ``table`` with new default values (a subclass's different defaults)."""
    unknown = set(defaults) - set(table)
    if unknown:
        raise KeyError(f"no option(s) {sorted(unknown)} to override")
    return {k: dataclasses.replace(o, default=defaults[k]) if k in defaults else o
            for k, o in table.items()}


def check_options(table: Mapping[str, Option], options: Mapping[str, Any],
                  owner: str) -> dict[str, Any]:
    """``options`` validated against ``table`` (normalised); unknown keys refused by name."""
    unknown = sorted(set(options) - set(table))
    if unknown:
        raise ConfigError(
            f"method {owner!r} has no option(s) {unknown}; valid options: "
            f"{', '.join(sorted(table))} (pyro-clip list options {owner})")
    return {k: table[k].check(k, v, owner) for k, v in options.items()}


def format_table(table: Mapping[str, Option], owner: str) -> str:
    """The rows ``pyro-clip list options`` prints: name, default, allowed values, meaning."""
    if not table:
        return f"{owner} has no options"
    rows = [(k, _short(o.default), o.allowed(), o.help) for k, o in sorted(table.items())]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    head = ("option", "default", "allowed")
    widths = [max(w, len(h)) for w, h in zip(widths, head, strict=True)]
    lines = [f"{owner} options (--opt KEY=VALUE):",
             "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + "  meaning"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
              for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def temperature_options() -> dict[str, Option]:
    """``temperature`` and its grid: the likelihood temperature ``T`` of a Bayesian head's
    predictive, ``p(y|x) = E[softmax(f(x) / T)]``, chosen on validation NLL by default."""
    from pyro_clip.inference.predictive import TEMPERATURE_GRID

    return {
        "temperature": Option("auto", "likelihood temperature of the predictive (auto: chosen "
                              "on validation NLL from temperature_grid)", float, ("auto",),
                              low=0, low_open=True),
        "temperature_grid": Option(list(TEMPERATURE_GRID), "candidates for temperature=auto",
                                   list, low=0, low_open=True, item=float),
    }


def temperature_candidates(options: Mapping[str, Any]) -> list[float]:
    """The temperatures a Bayesian head chooses from: ``[temperature]`` when it is fixed,
    ``temperature_grid`` when it is ``auto``."""
    return ([float(t) for t in options["temperature_grid"]] if options["temperature"] == "auto"
            else [float(options["temperature"])])


def augment_options(n_views: int) -> dict[str, Option]:
    """``augment`` and ``n_views``: the training-image views a method caches or draws."""
    from pyro_clip.data.augment import AUGMENTS

    return {
        "augment": Option("crop-flip", "training-image augmentation (random resized crop + "
                          "flip, flip only, or none)", choices=AUGMENTS),
        "n_views": Option(n_views, "augmented views per training image", int, low=1),
    }


def train_options(epochs: int, batch_size: int, lr: float, weight_decay: float,
                  optimizer: str | None = None) -> dict[str, Option]:
    """The gradient-training options (:class:`~pyro_clip.training.loop.TrainSettings`);
    ``optimizer=None`` leaves the optimiser fixed by the method (no option)."""
    from pyro_clip.training.loop import OPTIMIZERS

    table = {
        "epochs": Option(epochs, "passes over the training shots", int, low=1),
        "batch_size": Option(batch_size, "examples per gradient step", int, low=1),
        "lr": Option(lr, "learning rate (cosine schedule)", float, low=0, low_open=True),
        "weight_decay": Option(weight_decay, "weight decay of the optimiser", float, low=0),
    }
    if optimizer is not None:
        table["optimizer"] = Option(optimizer, "optimiser", choices=OPTIMIZERS)
    return table
