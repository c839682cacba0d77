"""Neural-network models on numpy/cupy with the per-layer statistics of FOOF (FedPM eq. 11-12) and K-FAC
(FedRCO eq. 6-8; KFC for convolutions): layers, models (softmax regression, MLP, FedRCO CNN) and curvature."""

from .curvature import (check_eps, damped, ema, foof_direction, foof_factor, foof_precondition, kfac_direction,
                        kfac_factors, kfac_inverses, kfac_precondition, pi_correction, sample_labels)
from .models import MODELS, LayerStats, Model, build_model, parse_spec

__all__ = [
    "Model", "build_model", "parse_spec", "MODELS", "LayerStats",
    "kfac_factors", "foof_factor", "ema", "pi_correction", "damped", "kfac_inverses", "kfac_precondition",
    "foof_precondition", "kfac_direction", "foof_direction", "check_eps", "sample_labels",
]
