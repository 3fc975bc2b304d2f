"""Adaptation methods; each module registers its classes with ``register_method``."""

from pyro_clip.methods.base import (
    Method,
    MethodContext,
    Prediction,
    create_method,
    get_method_class,
    known_methods,
    register_method,
)

__all__ = [
    "Method",
    "MethodContext",
    "Prediction",
    "create_method",
    "get_method_class",
    "known_methods",
    "register_method",
]
