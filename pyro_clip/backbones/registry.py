"""Backbones by spec, in the manner of open_clip's model registry (``factory.py``).

A spec is ``<kind>[:<arguments>]``: ``"conse"`` (offline pre-trained default) or
``"open_clip:<model>[:<pretrained>][?quick_gelu=0|1]"`` (see
:mod:`pyro_clip.backbones.open_clip_backbone`). A kind is one :class:`DualEncoder` subclass
that carries :func:`register_backbone` and says, as class members, its ``spec_prefix`` (the
part before the first ``:``), how its specs are written (``spec_usage``), how it is built from
a spec (``from_spec``) and which specs it lists (``known_specs``). Every module of this package
is imported the first time a backbone is asked for, so nothing here names a kind; a kind
defined elsewhere registers when its module is imported.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pyro_clip.backbones.base import DualEncoder

# re-exported where callers (suite dry runs and estimates) have always found them
from pyro_clip.backbones.open_clip_spec import parse_open_clip_spec
from pyro_clip.backbones.open_clip_spec import (
    register_open_clip_configs as _register_open_clip_configs,
)
from pyro_clip.errors import BackboneError
from pyro_clip.utils.names import close_matches, did_you_mean, similar_names
from pyro_clip.utils.plugins import import_plugins

__all__ = [
    "_register_open_clip_configs",
    "backbone_kinds",
    "create_backbone",
    "known_backbones",
    "parse_open_clip_spec",
    "register_backbone",
    "unregister_backbone",
]

_KINDS: dict[str, type[DualEncoder]] = {}

B = TypeVar("B", bound=type[DualEncoder])


def register_backbone(cls: B) -> B:
    """Class decorator: make ``cls`` the backbone of specs ``<cls.spec_prefix>[:...]``."""
    prefix = cls.__dict__.get("spec_prefix")
    if not isinstance(prefix, str) or not prefix or ":" in prefix:
        raise TypeError(f"{cls.__name__} needs a class attribute spec_prefix = '<name>' "
                        "(no ':') to register")
    other = _KINDS.get(prefix)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise TypeError(f"backbone {prefix!r} is registered twice ({other.__name__}, "
                        f"{cls.__name__}); give one of them another spec_prefix")
    _KINDS[prefix] = cls
    return cls


def unregister_backbone(prefix: str) -> None:
    """Forget the kind of specs ``<prefix>[:...]`` (a plug-in's tests clean up with it)."""
    if _KINDS.pop(prefix, None) is None:
        raise BackboneError(f"no backbone kind {prefix!r} is registered; registered: "
                            f"{list(backbone_kinds())}")


def backbone_kinds() -> dict[str, type[DualEncoder]]:
    """Every registered kind by spec prefix, in listing order (``DualEncoder.spec_order``)."""
    import_plugins("pyro_clip.backbones")
    return dict(sorted(_KINDS.items(), key=lambda item: (item[1].spec_order, item[0])))


def known_backbones() -> list[str]:
    """Every spec the kinds list: the offline default and each open_clip model name."""
    return [spec for cls in backbone_kinds().values() for spec in cls.known_specs()]


def create_backbone(spec: str, **kwargs: Any) -> DualEncoder:
    """Build the backbone named by ``spec`` (see the module docstring); kwargs go to its class.

    An unknown kind fails with each kind's spec form and the close matches of ``spec``.
    """
    kinds = backbone_kinds()
    prefix, colon, rest = spec.partition(":")
    cls = kinds.get(prefix)
    if cls is None:
        raise BackboneError(
            f"unknown backbone {spec!r}; use "
            + " or ".join(k.spec_usage or repr(p) for p, k in kinds.items())
            + f" (models: pyro-clip list backbones){_suggest(spec, prefix, colon + rest)}"
        )
    return cls.from_spec(spec, **kwargs)


def _suggest(spec: str, prefix: str, rest: str) -> str:
    """Close matches of a mistyped kind (``open-clip:...``) or of a listed spec (``ViT-B-32``)."""
    kinds = similar_names(prefix, backbone_kinds())
    if kinds:
        return did_you_mean(kind + rest for kind in kinds)
    return close_matches(spec, known_backbones())
