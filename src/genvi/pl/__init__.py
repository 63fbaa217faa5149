"""Plots that take AnnData or metric tables and return matplotlib figures or axes."""

from ._calibration import calibration_curve
from ._counterfactual import counterfactual_scatter
from ._embedding import real_vs_generated
from ._expression import mean_var_scatter

__all__ = ["calibration_curve", "counterfactual_scatter", "mean_var_scatter", "real_vs_generated"]
