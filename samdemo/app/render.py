"""Pictures for the app: the image with its mask and prompts, the perturbation amplified and at true
scale, the transfer heatmap, the robustness curve, "segment everything" masks in colour, the adapter's
singular values, and the files offered for download (PNG, bundle zip). numpy / OpenCV / matplotlib,
no gradio."""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from samdemo.app.session import PromptState, display_scale, upscale
from samdemo.metrics import perturbation_norms


MASK_RGB = (30, 144, 255)
POS_RGB, NEG_RGB, BOX_RGB = (0, 200, 70), (235, 30, 30), (255, 215, 0)
PAINT_RGB, GT_RGB = (0, 230, 230), (255, 70, 200)


def _contours(mask: np.ndarray):
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    return contours


def render_overlay(image: np.ndarray, mask: np.ndarray | None = None, prompts: PromptState | None = None,
                   color=MASK_RGB, show_ground_truth: bool = True) -> np.ndarray:
    """The image (upscaled by ``display_scale``) with a mask (filled and outlined) and the prompts."""
    s = display_scale(image.shape[:2])
    out = upscale(image, s)
    side = max(out.shape[:2])
    line = max(2, round(side / 256))  # strokes and markers grow with the picture, which is shown ~500 px wide
    if mask is not None and mask.any():
        big = upscale(mask.astype(np.uint8), s).astype(bool)
        tinted = out.astype(np.float32)
        tinted[big] = tinted[big] * 0.5 + np.array(color, np.float32) * 0.5
        out = tinted.clip(0, 255).astype(np.uint8)
        contours = _contours(big)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), line)
        cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, line // 2))
    if prompts is None:
        return out
    if prompts.mask is not None:
        for contour in _contours(upscale(prompts.mask.astype(np.uint8), s)):
            cv2.polylines(out, [contour], True, PAINT_RGB, line, lineType=cv2.LINE_AA)
    if show_ground_truth and prompts.ground_truth is not None:
        for contour in _contours(upscale(prompts.ground_truth.astype(np.uint8), s)):
            _dashed(out, contour, GT_RGB, line, dash=3 * line)

    def disp(x, y):
        return int(round((x + 0.5) * s - 0.5)), int(round((y + 0.5) * s - 0.5))

    r = max(7, round(side / 64))
    if prompts.box is not None:
        x0, y0, x1, y1 = prompts.box
        cv2.rectangle(out, disp(x0, y0), disp(x1, y1), (0, 0, 0), line + 2, cv2.LINE_AA)
        cv2.rectangle(out, disp(x0, y0), disp(x1, y1), BOX_RGB, line, cv2.LINE_AA)
    if prompts.corner is not None:
        cx, cy = disp(*prompts.corner)
        cv2.drawMarker(out, (cx, cy), (0, 0, 0), cv2.MARKER_CROSS, 4 * r, line + 2, cv2.LINE_AA)
        cv2.drawMarker(out, (cx, cy), BOX_RGB, cv2.MARKER_CROSS, 4 * r, line, cv2.LINE_AA)
    for x, y, label in prompts.points:
        c = disp(x, y)
        cv2.circle(out, c, r + line, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(out, c, r, POS_RGB if label else NEG_RGB, -1, cv2.LINE_AA)
        arm = max(2, r - 3)
        cv2.line(out, (c[0] - arm, c[1]), (c[0] + arm, c[1]), (255, 255, 255), line, cv2.LINE_AA)
        if label:
            cv2.line(out, (c[0], c[1] - arm), (c[0], c[1] + arm), (255, 255, 255), line, cv2.LINE_AA)
    return out


def _dashed(out: np.ndarray, contour: np.ndarray, color, thickness: int, dash: int = 6) -> None:
    pts = contour[:, 0, :]
    for i in range(0, len(pts), 2 * dash):
        seg = pts[i:i + dash]
        if len(seg) > 1:
            cv2.polylines(out, [seg.reshape(-1, 1, 2)], False, color, thickness, cv2.LINE_AA)


def banner(image: np.ndarray, text: str, color=(255, 255, 255)) -> np.ndarray:
    """Write ``text`` on a dark strip along the bottom of an RGB image (a copy; the top-left corner
    is where the app shows the panel's label)."""
    out = image.copy()
    scale = max(0.5, out.shape[1] / 640)
    thick = 1 if scale < 0.7 else 2
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    pad = max(4, th // 2)
    strip = min(out.shape[0], th + base + 2 * pad)
    out[-strip:] = (out[-strip:].astype(np.float32) * 0.35).astype(np.uint8)
    cv2.putText(out, text, (pad, out.shape[0] - pad - base), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick,
                cv2.LINE_AA)
    return out


def perturbation_image(clean: np.ndarray, adversarial: np.ndarray, eps255: float) -> tuple[np.ndarray, str]:
    """The perturbation amplified so that ±ε spans black..white (grey = 0), with a scale bar.

    Returns the picture (upscaled like the other panels) and a caption with its scale and norms."""
    delta = adversarial.astype(np.int16) - clean.astype(np.int16)
    eps255 = max(float(eps255), 1e-6)
    gain = 127.5 / eps255
    vis = np.clip(127.5 + delta.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    s = display_scale(clean.shape[:2])
    vis = upscale(vis, s)
    width = vis.shape[1]
    bar_h = max(28, width // 14)
    bar = np.full((bar_h, width, 3), 255, np.uint8)
    grad_h = bar_h // 3
    ramp = np.linspace(0, 255, width).astype(np.uint8)
    bar[:grad_h] = ramp[None, :, None]
    font_scale = max(0.4, width / 1100)
    for frac, text in ((0.0, f"-{eps255:g}/255"), (0.5, "0"), (1.0, f"+{eps255:g}/255")):
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        x = int(np.clip(frac * width - tw / 2, 2, width - tw - 2))
        cv2.putText(bar, text, (x, grad_h + th + 4), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    norms = perturbation_norms(clean, adversarial)
    mean_abs = float(np.abs(delta).mean()) if delta.size else 0.0
    psnr = "∞" if not np.isfinite(norms.psnr_db) else f"{norms.psnr_db:.1f} dB"
    caption = (f"Left: the perturbation amplified ×{gain:.0f} (mid-grey is no change, black / white is −ε / +ε, "
               f"ε = {eps255:g}/255); right: the same at true scale, as the model receives it. Measured: "
               f"L∞ = {norms.linf255}/255, L2 = {norms.l2_255:.1f}/255 over all pixels and channels, "
               f"mean |δ| = {mean_abs:.2f}/255, PSNR = {psnr}.")
    return np.concatenate([vis, bar], axis=0), caption


def perturbation_true_scale(clean: np.ndarray, adversarial: np.ndarray) -> np.ndarray:
    """The perturbation as it is: mid-grey plus δ, unamplified (upscaled like the other panels). That
    it looks flat grey is the point: the change is invisible."""
    delta = adversarial.astype(np.int16) - clean.astype(np.int16)
    return upscale(np.clip(128 + delta, 0, 255).astype(np.uint8), display_scale(clean.shape[:2]))


def before_after(clean: np.ndarray, adversarial: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The clean and the adversarial image at display scale, for the before / after slider."""
    s = display_scale(clean.shape[:2])
    return upscale(clean, s), upscale(adversarial, s)


def transfer_figure(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str):
    """A matplotlib heatmap of IoU values (0..1), annotated, red = attack worked."""
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix, dtype=np.float64)
    fig = Figure(figsize=(4.6, 3.8), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(matrix, cmap="RdYlGn", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(cols)), labels=list(cols))
    ax.set_yticks(range(len(rows)), labels=list(rows))
    ax.set_xlabel("prompt type used to evaluate")
    ax.set_ylabel("attack (@ prompt type used to craft it)")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            value = matrix[i, j]
            ax.text(j, i, "—" if not np.isfinite(value) else f"{value:.2f}", ha="center", va="center",
                    color="black", fontsize=11)
    fig.colorbar(im, ax=ax, label="IoU with the clean mask")
    ax.set_title(title, fontsize=10)
    return fig


def curve_figure(curve, reference: str):
    """The robustness curve (``samdemo.plots.robustness_curve_plot``) titled with its attack."""
    from samdemo import plots

    request = curve.request
    title = (f"{request.attack} attack, {request.generator.upper()}, {request.steps} steps; mIoU vs {reference}")
    return plots.robustness_curve_plot(curve, title=title)


def curve_markdown(curve, reference: str, seconds: float) -> str:
    """The curve's points as a markdown table, and how to read it."""
    series = list(curve.miou)
    header = "| ε (/255) | " + " | ".join(curve.label(a, e) for a, e in series) + " |"
    lines = [header, "|" + " --- |" * (len(series) + 1)]
    for i, eps in enumerate(curve.eps255):
        lines.append(f"| {eps:g} | " + " | ".join(f"{curve.miou[key][i]:.3f}" for key in series) + " |")
    return ("mIoU against " + reference + " at each ε: solid lines are attacks crafted on the model they are "
            "evaluated on (white-box, and *adaptive* for the robust model), dashed lines transfers from the other "
            f"model. {seconds:.1f} s.\n\n" + "\n".join(lines))


def masks_panel(image: np.ndarray, masks: np.ndarray, text: str) -> np.ndarray:
    """K x H x W masks of "segment everything", each in its own colour, over the H x W x 3 image, at
    display scale with ``text`` along the bottom."""
    return banner(upscale(render_masks(image, masks), display_scale(image.shape[:2])), text)


def render_masks(image: np.ndarray, masks: np.ndarray, alpha: float = 0.55, colormap: str = "tab20") -> np.ndarray:
    """H x W x 3 uint8 image with each of K x H x W masks blended in its own colour (matplotlib's
    ``colormap``, cycled); later masks are drawn over earlier ones, so pass the largest first."""
    from matplotlib import colormaps

    out = image.astype(np.float32)
    palette = colormaps[colormap]
    for k, mask in enumerate(masks):
        colour = np.asarray(palette(k % palette.N)[:3], np.float32) * 255
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def panel_title(panel) -> str:
    """The label of one results panel (``samdemo.app.actions.Panel``)."""
    title = f"{panel.model_label} · {panel.input}"
    return f"{title}: no adapter loaded" if panel.mask is None else f"{title} — IoU {panel.iou_ref:.2f}"


def panel_image(panel, image: np.ndarray, adversarial: np.ndarray, prompts: PromptState) -> np.ndarray | None:
    """One results panel: the clean or adversarial image with the panel's mask, the prompts and its IoU
    (None for the robust model's panels when there is no adapter)."""
    if panel.mask is None:
        return None
    has_gt = prompts.ground_truth is not None
    overlay = render_overlay(image if panel.input == "clean" else adversarial, panel.mask, prompts,
                             show_ground_truth=has_gt)
    reference = not has_gt and (panel.model, panel.input) == ("original", "clean")
    return banner(overlay, f"IoU {panel.iou_ref:.2f}" + (" (reference)" if reference else ""))


def adapter_figure(robust):
    """The singular values of the robust model's adapted layers before and after (None: no adapter)."""
    if robust is None:
        return None
    from samdemo import plots

    return plots.singular_value_plot(robust.adapter)


def _download_folder() -> Path:
    """The app's temporary folder for downloads; files older than an hour are removed."""
    folder = Path(tempfile.gettempdir()) / "samdemo-app"
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in [*folder.glob("*.png"), *folder.glob("*.zip")]:  # keep the folder small
        try:
            if now - old.stat().st_mtime > 3600:
                old.unlink()
        except OSError:
            pass
    return folder


def save_png(image: np.ndarray, prefix: str = "adversarial") -> str:
    """Write an RGB uint8 image as a lossless PNG in the app's temporary folder; returns its path."""
    path = _download_folder() / f"{prefix}-{uuid.uuid4().hex[:12]}.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return str(path)


def save_bundle(outcome, image: np.ndarray, prompts: PromptState, settings: dict, caveats: list[str],
                headers: Sequence[str]) -> str:
    """The download zip of an attack (``samdemo.bundle``): clean and adversarial PNG, every panel's mask
    (and the painted prompt / ground truth), the table as CSV, the settings JSON that
    ``python -m samdemo attack --replay`` reproduces, and a README; returns its path."""
    from samdemo.bundle import write_bundle

    masks = {key.replace("/", "-"): panel.mask for key, panel in outcome.panels.items() if panel.mask is not None}
    if prompts.mask is not None:
        masks["mask-prompt"] = prompts.mask
    if prompts.ground_truth is not None:
        masks["ground-truth"] = prompts.ground_truth
    table = [list(headers)] + [["" if v is None else v for v in row] for row in outcome.table]
    readme = ["Replay the adversarial image with the samdemo command line:",
              "    unzip this file; python -m samdemo attack --replay settings.json --out replayed.png",
              "(or --replay on the zip itself). masks/ holds each panel's mask, 255 = object."]
    readme += [f"Not replayed: {caveat}." for caveat in caveats]
    path = _download_folder() / f"samdemo-attack-{uuid.uuid4().hex[:12]}.zip"
    write_bundle(path, image, outcome.adversarial, masks, table, settings, "\n".join(readme))
    return str(path)
