"""Attack an image and save the adversarial PNG (``python -m samdemo attack``).

    python -m samdemo attack --image in.png --attack cross-prompt --eps 8 --steps 10 --out adv.png \
        [--model sam-small] [--point X Y] [--negative-point X Y] [--box X0 Y0 X1 Y1] [--seed 0] [--generator pgd] \
        [--adapter shipped|FOLDER|owner/name[@rev] [--target robust]] [--bundle run.zip]
    python -m samdemo attack --replay run.zip --out replayed.png     # or --replay settings.json

eps and step size are in 1/255 units. The prompts (points, a box; the image centre when none)
define the object: its clean mask gives point / box / mask prompts (``prompts_from_mask``),
and the command prints, for each, the IoU of the adversarial prediction against the clean one,
plus the user's own prompt. The ``mask`` attack is crafted with the user's prompt; the others
never see it. With ``--adapter`` the robust model (``samdemo.factory.robust_copy``) is evaluated too,
and ``--target robust`` crafts the attack on it (adaptive). The output must be a PNG: a lossy format
would break the L-infinity bound.
``--bundle`` writes a zip (``samdemo.bundle``) whose settings replay the same attack bit for bit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from samdemo import distributed
from samdemo.attacks.base import DEFAULT_STEPS, EPS_MAX_255


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from samdemo.attacks import ATTACKS, GENERATORS
    from samdemo.build import DEFAULT_MODEL

    parser.add_argument("--image", type=Path, default=None, help="input image (PNG/JPEG, RGB); required without --replay")
    parser.add_argument("--out", type=Path, required=True, help="adversarial image, .png (lossless)")
    parser.add_argument("--replay", type=Path, default=None,
                        help="take image and attack settings from a settings JSON (or a --bundle zip); "
                             "options given here are replaced by the file's")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="also write a .zip: clean and adversarial PNG, masks, IoU table CSV, settings JSON")
    parser.add_argument("--attack", default="cross-prompt", choices=list(ATTACKS))
    parser.add_argument("--eps", type=float, default=8.0, help=f"L-inf bound in 1/255 units (0..{EPS_MAX_255}), default 8")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="iterations (1..1000), default 10")
    parser.add_argument("--step-size", type=float, default=None, help="1/255 units; default 2.5 * eps / steps")
    parser.add_argument("--generator", default="pgd", choices=list(GENERATORS))
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    parser.add_argument("--weights", type=Path, default=None,
                        help="load these weights (safetensors or a training state.pt) into --model's architecture")
    parser.add_argument("--point", type=float, nargs=2, action="append", metavar=("X", "Y"),
                        help="positive point (pixels); repeat for more")
    parser.add_argument("--negative-point", type=float, nargs=2, action="append", metavar=("X", "Y"),
                        help="negative point (pixels), part of the same prompt; repeat for more")
    parser.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"))
    parser.add_argument("--adapter", default=None,
                        help="also evaluate the robust model: 'shipped' (checkpoints/<model>-adapter), an adapter "
                             "folder, or a Hub repo owner/name[@revision]")
    parser.add_argument("--target", default="original", choices=["original", "robust"],
                        help="craft the attack on the original model (default) or on the robust one (adaptive)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-random-start", action="store_true")
    distributed.add_device_argument(parser)


def read_user_image(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """The image as a viewer shows it (EXIF orientation applied), within the app's limits
    (``samdemo.limits``: pixels counted before decoding, larger images downscaled, with a note on
    stderr), and the file's own (height, width), the frame of the user's prompts."""
    from samdemo.limits import read_image as read_within_limits

    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist (or is not a file).")
    image, note, (w, h) = read_within_limits(path)
    if note:
        resized = " Prompts are scaled to match; the output has this size." if image.shape[:2] != (h, w) else ""
        print(f"note: {note}{resized}", file=sys.stderr)
    return image, (h, w)


def user_prompts(args, hw: tuple[int, int], scale: float = 1.0):
    """The user's prompt (points and/or box as ONE prompt), validated in the ``hw`` frame of the image
    the user sees, then multiplied by ``scale`` (the image was downscaled); None when there is none."""
    from samdemo.prompts import Prompt

    positive = np.array(args.point or [], np.float32).reshape(-1, 2)
    negative = np.array(getattr(args, "negative_point", None) or [], np.float32).reshape(-1, 2)
    points = np.concatenate([positive, negative])
    labels = np.r_[np.ones(len(positive), np.int64), np.zeros(len(negative), np.int64)]
    if not len(points) and args.box is None:
        return None
    box = None if args.box is None else np.array(args.box, np.float32)
    Prompt(points=points, labels=labels, box=box).validate(hw)
    return Prompt(points=points * scale, labels=labels, box=None if box is None else box * scale)


def apply_replay(args) -> None:
    """Replace ``args``' attack options by those of the ``--replay`` file (``samdemo.bundle``)."""
    from samdemo.bundle import read_settings

    if args.replay is not None:
        optional = {"step_size": None, "point": None, "negative_point": None, "box": None, "no_random_start": False,
                    "adapter": None, "target": "original"}
        for key, value in (optional | read_settings(args.replay)).items():
            setattr(args, key, value)
    if args.image is None:
        raise ValueError("give --image (or --replay settings.json).")


def replay_settings(args, prompt) -> dict:
    """The attack in the CLI's option names, the prompt in the frame of the image actually attacked."""
    settings = {key: getattr(args, key) for key in ("model", "attack", "eps", "steps", "seed", "generator",
                                                    "step_size", "no_random_start", "adapter", "target")}
    if prompt is not None:
        settings["point"] = prompt.points[prompt.labels == 1].tolist() or None
        settings["negative_point"] = prompt.points[prompt.labels == 0].tolist() or None
        settings["box"] = None if prompt.box is None else prompt.box.tolist()
    if args.weights is not None:
        raise ValueError("--bundle records a named model's settings; it cannot replay --weights.")
    return settings | {"image": str(args.image)}


def robust_engine(engine, model: str, source: str):
    """The robust copy of ``engine``: ``source`` is "shipped" (``checkpoints/<model>-adapter``), an adapter
    folder, or a Hub repo ``owner/name[@revision]``."""
    from samdemo.build import CHECKPOINT_DIR
    from samdemo.factory import robust_copy

    if source == "shipped":
        return robust_copy(engine, CHECKPOINT_DIR / f"{model}-adapter")[0]
    if Path(source).is_dir():
        return robust_copy(engine, Path(source))[0]
    repo_id, _, revision = source.partition("@")
    return robust_copy(engine, repo_id, revision or None)[0]


def run(args) -> int:
    from samdemo.attacks.transfer import object_prompts
    from samdemo.build import attack_options
    from samdemo.factory import load_engine
    from samdemo.limits import is_out_of_memory, out_of_memory_message
    from samdemo.pipeline import AttackRequest, run_attack
    from samdemo.prompts import point_prompt

    apply_replay(args)
    if args.bundle is not None and args.bundle.suffix.lower() != ".zip":
        raise ValueError(f"--bundle must be a .zip file; got {args.bundle.name!r}.")
    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png file (lossless); got {args.out.name!r}.")
    request = AttackRequest(attack=args.attack, generator=args.generator, eps255=args.eps, steps=args.steps,
                            step_size255=args.step_size, random_start=not args.no_random_start, seed=args.seed,
                            options=attack_options(args.model, args.attack))
    image, shown_hw = read_user_image(args.image)
    h, w = image.shape[:2]
    prompt = user_prompts(args, shown_hw, w / shown_hw[1])
    engine = load_engine(args.model, args.weights, device=args.device, frozen=True)
    engines = {"original": engine}
    if args.adapter:
        engines["robust"] = robust_engine(engine, args.model, args.adapter)
    elif args.target == "robust":
        raise ValueError("--target robust needs --adapter (the robust model to craft the attack on).")
    own = prompt if prompt is not None else point_prompt(w / 2, h / 2)
    # evaluated: the user's prompt, and the point / box / mask prompts of its clean object
    objects, _ = object_prompts(engine, image, prompts=[own])
    evaluated = {"your prompt" if prompt is not None else "centre point": own} | objects[0]
    try:
        outcome = run_attack(request, engines, image, list(evaluated.values()), target=args.target, craft_prompts=[own],
                             progress=lambda t, total: print(f"\rstep {t}/{total}", end="", file=sys.stderr,
                                                             flush=True))
    except (RuntimeError, MemoryError) as error:  # out of memory: say what to change
        if is_out_of_memory(error):
            raise RuntimeError(out_of_memory_message(error)) from None
        raise
    print(file=sys.stderr)
    adv = outcome.adversarial
    from PIL import Image

    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(adv).save(args.out)
    linf = int(np.abs(adv.astype(int) - image.astype(int)).max())
    print(f"{args.attack} on {engine.name} ({args.target} model): eps {args.eps:g}/255, "
          f"{outcome.timings['steps_run']} steps ({args.generator}), {outcome.result.seconds:.1f} s, "
          f"L-inf {linf}/255 -> {args.out}")
    table, masks = [["model", "prompt", "IoU(adversarial, clean)"]], {}
    for name in engines:
        print(f"IoU(adversarial, clean) per prompt, {name} model:")
        for k, (label, iou) in enumerate(zip(evaluated, outcome.iou(name, "adversarial"))):
            print(f"  {label:>13}: {iou:.3f}")
            kind = label.replace(" ", "-")
            table.append([name, kind, round(float(iou), 4)])
            for which in ("clean", "adversarial"):
                masks[f"{kind}-{which}" if name == "original" else f"{name}-{kind}-{which}"] = outcome.masks[name, which][k]
    if args.bundle is not None:
        from samdemo.bundle import write_bundle

        write_bundle(args.bundle, image, adv, masks, table, replay_settings(args, prompt))
        print(f"bundle -> {args.bundle} (replay: python -m samdemo attack --replay {args.bundle} --out replayed.png)")
    return 0


def main(argv=None) -> int:
    """This command alone (``python -m samdemo.attacks.cli``), with the same error handling as
    ``python -m samdemo``: a bad input gives one ``error: ...`` line and exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m samdemo attack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(parser)
    args = parser.parse_args(argv)
    try:
        args.device = distributed.check_device(args.device)
        return run(args)
    except (ValueError, RuntimeError, FileNotFoundError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
