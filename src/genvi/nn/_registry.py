"""Names under which models accept priors (``PriorVI(prior=...)``)."""

from torch import nn

from genvi.nn._flow_prior import ConditionalFlowPrior
from genvi.nn._priors import ConditionalGaussianPrior, MixtureOfGaussiansPrior, StandardNormalPrior
from genvi.nn._vamp_prior import VampPrior

PRIORS: dict[str, type[nn.Module]] = {
    "normal": StandardNormalPrior,
    "gaussian": ConditionalGaussianPrior,
    "mog": MixtureOfGaussiansPrior,
    "flow": ConditionalFlowPrior,
    "vamp": VampPrior,
}
