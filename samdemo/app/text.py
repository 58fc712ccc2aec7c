"""What the app's widgets offer (label, value) and the help text the page shows."""

from samdemo.app.actions import TARGET_ORIGINAL, TARGET_ROBUST
from samdemo.app.models import ADAPTER_HUB, ADAPTER_NONE, ADAPTER_SHIPPED

ATTACK_CHOICES = [  # (label, name in samdemo.attacks.ATTACKS)
    ("cross-prompt, ours (key-channel features + sampled-prompt mask term)", "cross-prompt"),
    ("key-channel, the paper's (key-channel feature loss only)", "key-channel"),
    ("single-prompt mask (breaks the mask of your prompt)", "mask"),
    ("full-feature (pushes the image embedding away)", "feature"),
    ("random noise of the same ε (baseline)", "random"),
]
GENERATOR_CHOICES = [("PGD", "pgd"), ("FGSM", "fgsm"), ("MI-FGSM", "mifgsm"), ("APGD", "apgd")]
TARGET_CHOICES = [("original model → transfer to the robust one", TARGET_ORIGINAL),
                  ("robust model (adaptive attack)", TARGET_ROBUST)]
ADAPTER_CHOICES = [("shipped with samdemo", ADAPTER_SHIPPED), ("from the Hugging Face Hub", ADAPTER_HUB),
                   ("none", ADAPTER_NONE)]

TABLE_HEADERS = ["model", "input", "IoU vs original clean", "IoU vs own clean", "IoU vs ground truth",
                 "attack success (own IoU < 0.5)", "predicted IoU"]

INTRO_MD = """# samdemo · adversarial robustness lab for Segment Anything
Click the image to prompt SAM, then attack it with an invisible perturbation and compare the
**original** model with the **robust** one (the same model with a small trained adapter).
Measured honestly (100-step adaptive attacks, worst case per object, docs/RESULTS.md), the shipped
adapters of the small embedded models recover only a few points: try the *adaptive* target to see it.
"""
PROMPT_HELP_MD = """**Prompts:** pick a mode, then click the image. *Positive* points mark the object, *negative*
points what is not part of it, a *box* takes two clicks (opposite corners), a *mask* is painted
in the **Paint** tab (as a prompt, or as the ground truth the results are scored against).
Combine them freely; the clean mask (blue) updates after each click. On the image: green ⊕ positive,
red ⊖ negative, yellow box, cyan outline the painted mask prompt, pink dashes the ground truth."""
ATTACK_HELP_MD = """**ε** is the largest change the attacker may make to any pixel, per colour channel, in units of
1/255: 8/255 ≈ 3 % of the range, hard to see. **Target:** a *transfer* attack is crafted on the
original model only and then shown to the robust model, as an attacker who does not know the
defence would; an *adaptive* attack is crafted on the robust model itself, the honest test of a
defence. An attack *succeeds* on a model when its adversarial mask overlaps its clean mask with
IoU below 0.5."""
CURVE_HELP_MD = """The curve attacks your object at ε = 0, 1, 2, 4, 8 and 16 /255 with the attack, generator,
steps and seed chosen above (the ε slider and the target are not used): at every ε the attack is crafted
once on the original model (white-box for it, a *transfer* for the robust one) and once on the robust
model (*adaptive*), so it costs 10 attacks; mIoU is against your ground truth if you painted one, else the
original model's clean mask. A defence worth the name keeps the robust model's adaptive line high."""
EVERYTHING_HELP_MD = """SAM's automatic mask generator prompts the model with a grid of points and keeps every
confident mask, each drawn in its own colour. The attack chosen above is crafted once on the target model
(the cross-prompt attack needs no prompt: the natural attack here), then both models segment everything on
the clean and the adversarial image. A clean mask *survives* when an adversarial mask overlaps it with
IoU ≥ 0.5. A few seconds per segmentation on a CPU with the embedded models."""
