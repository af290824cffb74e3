"""The analysis engine: upper hull, the saturating power law of Abnar et al. (2022) eq. (1), its bootstrap,
sample-size sensitivity, and the paper's other analyses, on tidy accuracy tables.

Data flow: tables (load_table and the loaders of the public tables) -> hull -> powerlaw fit -> bootstrap /
sensitivity / the other analyses. docs/ANALYSIS.md states the conventions. Nothing here imports scipy.
"""

from .hull import upper_hull
from .powerlaw import PowerLawFit, fit_saturating_power_law
from .bootstrap import BootstrapResult, bootstrap_fit
from .sensitivity import sample_size_sensitivity
from .tables import AccuracyTable, load_table, load_openclip, load_clip_benchmark, load_model_soups
from .scaling import scale_accuracy
from .shots import params_vs_shots
from .prediction import prediction_power, hull_overlay
from .correlations import spearman_matrices
from .layers import layer_profile
from .hyperparams import hyperparam_discrepancy

__all__ = [
    "upper_hull", "fit_saturating_power_law", "PowerLawFit", "bootstrap_fit", "BootstrapResult",
    "sample_size_sensitivity", "load_table", "AccuracyTable", "load_openclip", "load_clip_benchmark",
    "load_model_soups", "scale_accuracy", "params_vs_shots", "prediction_power", "hull_overlay",
    "spearman_matrices", "layer_profile", "hyperparam_discrepancy",
]
