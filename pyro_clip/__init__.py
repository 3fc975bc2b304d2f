"""pyro-clip: Bayesian few-shot adaptation of CLIP-style dual encoders with Pyro."""

__version__ = "0.1.0"
