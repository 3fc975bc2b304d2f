"""Uncertainty diagnostics: calibration, selective prediction, OOD detection, ArviZ, plots.

Everything here works from a method's :class:`~pyro_clip.methods.Prediction` (``probs`` and
optional ``logit_samples``) and labels, so new methods plug in without changes.
"""
