"""Adversarial attacks on SAM / SAM 2 (torchattacks style: one small class per attack).

    from samdemo.attacks import make_attack
    attack = make_attack("cross-prompt", engine, eps=8/255, steps=10, seed=0)
    result = attack(images)            # B x 3 x H x W in [0, 1]; prompts=... for "mask"
    result.adv_images, result.losses, result.seconds

``cross-prompt`` is ours (key-channel feature loss + a mask term over sampled prompts);
``key-channel`` is the paper's (the feature loss alone). Every iterative attack returns its best
iterate and takes ``restarts``; ``generator="apgd"`` is Auto-PGD. Any engine can be the target: the original model (a transfer attack when evaluated on
another) or a defended one (an adaptive attack). See docs/METHOD.md, section "Attacks".
"""

from samdemo.attacks.base import (DEFAULT_EPS, DEFAULT_STEPS, EPS_MAX, Attack, AttackCancelled, AttackResult,
                                  quantize_project, validate_eps, validate_steps)
from samdemo.attacks.baselines import FeatureAttack, MaskAttack, RandomAttack, mask_loss
from samdemo.attacks.cross_prompt import PROMPT_TYPES, CrossPromptAttack, KeyChannelAttack, sample_prompt_pool
from samdemo.attacks.generators import GENERATORS, make_generator

ATTACKS: dict[str, type[Attack]] = {
    "cross-prompt": CrossPromptAttack,  # ours: key-channel features + sampled-prompt mask term
    "key-channel": KeyChannelAttack,  # the paper's: key-channel feature loss only
    "mask": MaskAttack,
    "feature": FeatureAttack,
    "random": RandomAttack,
}


def make_attack(name: str, engine, **kwargs) -> Attack:
    """``ATTACKS[name](engine, **kwargs)`` with a clear error for an unknown name."""
    if name not in ATTACKS:
        raise ValueError(f"Unknown attack {name!r}; choose one of {', '.join(ATTACKS)}.")
    return ATTACKS[name](engine, **kwargs)


__all__ = ["ATTACKS", "Attack", "AttackCancelled", "AttackResult", "CrossPromptAttack", "DEFAULT_EPS",
           "DEFAULT_STEPS", "EPS_MAX", "FeatureAttack", "GENERATORS", "KeyChannelAttack", "MaskAttack", "PROMPT_TYPES", "RandomAttack",
           "make_attack", "make_generator", "mask_loss", "quantize_project", "sample_prompt_pool", "validate_eps",
           "validate_steps"]
