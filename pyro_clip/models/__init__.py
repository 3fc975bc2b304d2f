"""Probabilistic models (Pyro model/guide pairs and their maths helpers).

Import the submodules directly, e.g. ``from pyro_clip.models.ove_pg import ove_pg_loss``;
this package file stays import-light on purpose.
"""
