"""Pure loss functions of log-probs, one dict per family (see docs/architecture.md)."""

from alignlab.losses.lm import LM_LOSSES, nll
from alignlab.losses.ppo import KL_ESTIMATORS
from alignlab.losses.preference import COMMON_KWARGS, PREFERENCE_LOSSES, kto_reference_point
from alignlab.losses.reward import REWARD_LOSSES, bradley_terry

__all__ = [
    'COMMON_KWARGS', 'KL_ESTIMATORS', 'LM_LOSSES', 'PREFERENCE_LOSSES', 'REWARD_LOSSES',
    'bradley_terry', 'kto_reference_point', 'nll',
]
