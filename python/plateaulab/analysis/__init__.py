"""The analysis engine: upper hull, the saturating power law of Abnar et al. (2022) eq. (1), its bootstrap,
sample-size sensitivity, and the paper's other analyses, on tidy accuracy tables.

Data flow: tables (load_table and the loaders of the public tables) -> hull -> powerlaw fit -> bootstrap /
sensitivity / studies. docs/ANALYSIS.md states the conventions.
"""

from .hull import upper_hull
from .powerlaw import PowerLawFit, fit_saturating_power_law
from .bootstrap import BootstrapResult, bootstrap_fit
from .tables import AccuracyTable, load_table, load_openclip, load_clip_benchmark, load_model_soups

__all__ = [
    "upper_hull", "fit_saturating_power_law", "PowerLawFit", "bootstrap_fit", "BootstrapResult",
    "load_table", "AccuracyTable", "load_openclip", "load_clip_benchmark", "load_model_soups",
]
