"""Learnable text prompts for frozen dual encoders: CoOp and CoCoOp.

``from pyro_clip.prompts.coop import CoOpPromptLearner``;
``from pyro_clip.prompts.cocoop import CoCoOpPromptLearner``.
"""
