"""What the app's widgets offer (label, value) and the help text the page shows."""

from samdemo.app.actions import (BUDGET_PAPER, BUDGET_SPREAD, SOURCE_EXAMPLES, SOURCE_SCENES, SOURCE_UPLOADS,
                                 TARGET_ORIGINAL, TARGET_ROBUST)
from samdemo.app.models import ADAPTER_HUB, ADAPTER_NONE, ADAPTER_SHIPPED, ADAPTER_TRAINED

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
                   ("trained in this session", ADAPTER_TRAINED), ("none", ADAPTER_NONE)]
BUDGET_CHOICES = [("the paper's: every singular value of the 2 neck layers (512 on Meta's models, 256 on the "
                   "embedded ones)", BUDGET_PAPER),
                  ("spread: the k largest singular values of every layer of the image encoder", BUDGET_SPREAD)]
SOURCE_CHOICES = [("the examples (those that suit the model)", SOURCE_EXAMPLES), ("my uploaded images", SOURCE_UPLOADS),
                  ("generated scenes (with ground-truth masks)", SOURCE_SCENES)]
TRAIN_TABLE_HEADERS = ["held-out condition", "point mIoU", "box mIoU", "mask mIoU"]

TABLE_HEADERS = ["model", "input", "IoU vs original clean", "IoU vs own clean", "IoU vs ground truth",
                 "attack success (own IoU < 0.5)", "predicted IoU"]

INTRO_MD = """# samdemo · adversarial robustness lab for Segment Anything
Click the image to prompt SAM, then attack it with an invisible perturbation and compare the
**original** model with the **robust** one (the same model with a small trained adapter).
Measured honestly (100-step adaptive attacks, worst case per object, docs/RESULTS.md), the adapters
lift the worst case on points and boxes from 2-4 % to 12-15 % mIoU on sam2-small (+10 / +12 points;
clean 56 / 64 %) and from 3-8 % to 20-30 % on sam-small (+17 / +23, of which 6-10 also come from
fine-tuning the same values without attacks; clean 47 / 55 %): the attacks still win, the robust
model makes them work harder. Try the *adaptive* target to see how far it holds.
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
TRAIN_HELP_MD = """Train your own **robust adapter** for the model chosen above: only singular values of a few
layers move (the budget), adversarially, as in `python -m samdemo train-adapter`. Every step attacks the
current adapted model (cross-prompt, feature and mask attacks in turn, 4 PGD steps at ε = 8/255) and
trains it to keep its masks. Images: the examples, your own (label-free: the targets are the original
model's own clean masks), or generated scenes with ground truth. Before and after, a few held-out images
are scored clean and under a 10-step cross-prompt attack crafted on the model being scored. When it
finishes, the adapter becomes **this session's robust model** (no other visitor sees it); you can push it
to the Hugging Face Hub with your own token. On a CPU with the embedded models, 20 steps take a few
minutes; Meta's models want a GPU."""
PUSH_HELP_MD = """**Push to the Hub** (optional): a repo id you can write to and an access token with write
permission. The token is used for this upload only: it is not stored, logged or shown."""

# The guided tour: one step per line of the lab's story (click, attack, compare, curve).
TOUR_STEPS = [
    "**Click.** Pick an example below the image (the first one is a good start), then click the object: a "
    "positive point. The blue clean mask is what the original model segments.",
    "**Attack.** Keep the *cross-prompt* attack and ε = 8/255 and press **Run attack**. The perturbation is "
    "invisible (see *Perturbation at true scale*), yet it changes what the model segments.",
    "**Compare.** The 2 x 2 grid shows the original and the robust model on the clean and the adversarial "
    "input. Then choose *robust model (adaptive attack)* as the target and run again: the honest test of a "
    "defence is an attack crafted against it.",
    "**The curve.** Open *Robustness curve* and compute it: mIoU against ε for both models, transfer and "
    "adaptive. A defence worth the name keeps the robust model's adaptive line high. Then try *Train a robust "
    "adapter* yourself.",
]
