"""Approximate inference engines (Kalman filtering of adapter weights; SVI helpers)."""

from pyro_clip.inference.covariance import COVARIANCES, Covariance, make_covariance
from pyro_clip.inference.kalman import KalmanState, probit_probs

__all__ = ["COVARIANCES", "Covariance", "KalmanState", "make_covariance", "probit_probs"]
