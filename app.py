"""samdemo web app: `python app.py [--host H] [--port P] [--share] [--model NAME] [--device cpu|cuda[:N]]`.

Only the layout and the wiring of components to handlers live here; every handler is in the
``samdemo.app`` package (tested without a browser).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from samdemo.app.actions import TARGET_ORIGINAL  # noqa: E402
from samdemo.app.handlers import Lab  # noqa: E402
from samdemo.app.models import ADAPTER_HUB, APP_MODELS, AdapterChoice, ModelManager, model_choices  # noqa: E402
from samdemo.app.session import MODE_POSITIVE, PROMPT_MODES, Session  # noqa: E402
from samdemo.app.actions import BUDGET_PAPER, MAX_VALUES_PER_LAYER, SOURCE_SCENES  # noqa: E402
from samdemo.app.text import (ADAPTER_CHOICES, ATTACK_CHOICES, ATTACK_HELP_MD, BUDGET_CHOICES,  # noqa: E402
                              CURVE_HELP_MD, EVERYTHING_HELP_MD, GENERATOR_CHOICES, INTRO_MD, PROMPT_HELP_MD,
                              PUSH_HELP_MD, SOURCE_CHOICES, TABLE_HEADERS, TARGET_CHOICES, TRAIN_HELP_MD,
                              TRAIN_TABLE_HEADERS)
from samdemo.app.widgets import NumberInput, SliderInput, paint_editor, upload_image  # noqa: E402
from samdemo.pipeline import DEFAULT_ATTACK  # noqa: E402
from samdemo import distributed, limits  # noqa: E402
from samdemo.build import DEFAULT_MODEL  # noqa: E402
from samdemo.errors import UserError  # noqa: E402

CSS = """
.panel img {object-fit: contain}
#status {min-height: 3.2em}
"""
HEAVY = {"concurrency_id": "heavy", "concurrency_limit": 1}  # attacks, transfer matrices, training, model loads
HUB = {"concurrency_id": "hub", "concurrency_limit": 1}  # uploads to the Hub wait on the network, not the models
# Prompt edits run one at a time, in order: each sees the session state the previous one left
# (so quick successive clicks are all kept); they take milliseconds once the image is embedded.
LIGHT = {"concurrency_id": "light", "concurrency_limit": 1}
# Gradio refuses larger uploads before they reach a handler (samdemo/limits.py has the others).
LAUNCH_LIMITS = {"max_file_size": limits.max_upload_bytes(), "state_session_capacity": limits.MAX_SESSIONS}


def build_demo(lab: Lab | None = None, default_model: str = DEFAULT_MODEL,
               default_adapter: AdapterChoice | None = None) -> gr.Blocks:
    lab = lab or Lab()
    adapter_default = default_adapter or AdapterChoice()
    with gr.Blocks(title="samdemo · adversarial SAM lab", delete_cache=(1800, 3600)) as demo:
        # Per user; dropped when idle, with the adapter it trained.
        session = gr.State(Session(), time_to_live=limits.SESSION_IDLE_S, delete_callback=lab.on_session_end)
        gr.Markdown(INTRO_MD)
        with gr.Accordion("New here? A four-step tour", open=True):
            tour_index = gr.State(0)
            tour_md = gr.Markdown(lab.on_tour(0)[1], elem_id="tour")
            with gr.Row():
                tour_back = gr.Button("◀ Back", size="sm", elem_id="tour-back")
                tour_next = gr.Button("Next ▶", size="sm", elem_id="tour-next")
        with gr.Row():
            # ------------------------------------------------------------ image and prompts
            with gr.Column(scale=3):
                with gr.Tabs(selected="click") as tabs:
                    with gr.Tab("Click prompts", id="click"):
                        # Uploads reach the handler as a file path, unopened: the app decodes them within
                        # samdemo.limits (pixels counted first, EXIF rotation, GIF frame, 16-bit, alpha).
                        canvas = upload_image(label="Image: upload, paste, or pick an example; then click to prompt",
                                                sources=["upload", "clipboard"], format="png", height=520,
                                                elem_id="canvas")
                    with gr.Tab("Paint a mask", id="paint"):
                        editor = paint_editor(label="Paint over the object", sources=(),
                                              transforms=(), layers=False, height=520, elem_id="editor",
                                              brush=gr.Brush(colors=["#00e5e5"], color_mode="fixed", default_size=20))
                        with gr.Row():
                            paint_prompt_btn = gr.Button("Use as mask prompt", elem_id="paint-prompt")
                            paint_gt_btn = gr.Button("Use as ground truth", elem_id="paint-gt")
                with gr.Row():
                    mode = gr.Radio(PROMPT_MODES, value=MODE_POSITIVE, label="Prompt mode", scale=4,
                                    elem_id="mode")
                    undo_btn = gr.Button("↶ Undo", scale=1, elem_id="undo")
                    clear_btn = gr.Button("✕ Clear all", scale=1, elem_id="clear")
                status = gr.Markdown("Upload or paste an image, or pick an example below.", elem_id="status")
                gr.Markdown(PROMPT_HELP_MD)
                gallery = gr.Gallery([(str(e.path), e.label) for e in lab.examples], label="Examples (click one)",
                                     columns=6, height=210, allow_preview=False, object_fit="cover",
                                     elem_id="examples", interactive=False)
            # ------------------------------------------------------------ models and attack
            with gr.Column(scale=2):
                model = gr.Dropdown(model_choices(), value=default_model, label="Model", elem_id="model")
                model_info = gr.Markdown(elem_id="model-info")
                with gr.Group():
                    adapter_kind = gr.Radio(ADAPTER_CHOICES, value=adapter_default.kind,
                                            label="Defense: robustness adapter (the robust model; shipped = singular values only)")
                    with gr.Row(visible=adapter_default.kind == ADAPTER_HUB) as hub_row:
                        hub_repo = gr.Textbox(adapter_default.repo_id, label="Hub repo id", placeholder="owner/name",
                                              scale=3)
                        hub_rev = gr.Textbox(adapter_default.revision, label="Revision",
                                             placeholder="main or a commit hash", scale=2)
                        hub_btn = gr.Button("Load", scale=1)
                adapter_info = gr.Markdown(elem_id="adapter-info")
                with gr.Accordion("Adapter singular values", open=False):
                    sv_plot = gr.Plot(show_label=False)
                with gr.Group():
                    attack = gr.Dropdown(ATTACK_CHOICES, value=DEFAULT_ATTACK, label="Attack", elem_id="attack")
                    generator = gr.Radio(GENERATOR_CHOICES, value="pgd", label="Generator")
                    with gr.Row():
                        eps = SliderInput(1, limits.MAX_EPS255, value=8, step=1, label="ε (in /255)", elem_id="eps")
                        steps = SliderInput(1, limits.MAX_STEPS, value=min(10, limits.MAX_STEPS), step=1,
                                          label="Steps", elem_id="steps")
                    with gr.Row():
                        seed = NumberInput(0, precision=0, label="Seed", minimum=0, maximum=limits.MAX_SEED)
                        target = gr.Radio(TARGET_CHOICES, value=TARGET_ORIGINAL, label="Craft the attack on")
                    with gr.Row():
                        run_btn = gr.Button("Run attack", variant="primary", elem_id="run")
                        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
                gr.Markdown(ATTACK_HELP_MD)
        # ---------------------------------------------------------------- results
        gr.Markdown("## Results")
        timings = gr.Markdown(elem_id="timings")
        panel_args = dict(type="numpy", format="png", interactive=False, height=330, elem_classes=["panel"])
        with gr.Row():
            orig_clean = gr.Image(label="Original model · clean input", elem_id="panel-orig-clean", **panel_args)
            orig_adv = gr.Image(label="Original model · adversarial input", elem_id="panel-orig-adv", **panel_args)
        with gr.Row():
            rob_clean = gr.Image(label="Robust model · clean input", elem_id="panel-rob-clean", **panel_args)
            rob_adv = gr.Image(label="Robust model · adversarial input", elem_id="panel-rob-adv", **panel_args)
        table = gr.Dataframe(headers=TABLE_HEADERS, label="IoU per model and input", interactive=False,
                             elem_id="results-table")
        with gr.Row():
            before_after = gr.ImageSlider(label="Before / after: drag to compare the clean and the adversarial input",
                                          type="numpy", format="png", interactive=False, height=330,
                                          elem_id="before-after")
            with gr.Column():
                with gr.Row():
                    perturbation = gr.Image(label="Perturbation (amplified)", elem_id="perturbation", **panel_args)
                    true_scale = gr.Image(label="Perturbation at true scale", elem_id="perturbation-true",
                                          **panel_args)
                perturbation_caption = gr.Markdown(elem_id="perturbation-caption")
        with gr.Row():
            with gr.Column():
                adv_file = gr.File(label="Adversarial image (lossless PNG)", elem_id="adv-file")
                bundle_file = gr.File(label="Everything as a zip: PNGs, masks, table (CSV), settings (JSON) for "
                                            "`python -m samdemo attack --replay`", elem_id="bundle-file")
            with gr.Column():
                transfer_btn = gr.Button("Compute the transfer matrix across prompt types (6 attacks)",
                                         elem_id="transfer")
                transfer_plot = gr.Plot(label="Transfer matrix", elem_id="transfer-plot")
                transfer_md = gr.Markdown(elem_id="transfer-md")
        with gr.Accordion("Robustness curve: mIoU against ε, original and robust model", open=False):
            gr.Markdown(CURVE_HELP_MD)
            curve_btn = gr.Button("Compute the robustness curve", elem_id="curve")
            curve_plot = gr.Plot(label="Robustness curve", elem_id="curve-plot")
            curve_md = gr.Markdown(elem_id="curve-md")
        with gr.Accordion("Segment everything under attack", open=False):
            gr.Markdown(EVERYTHING_HELP_MD)
            everything_btn = gr.Button("Segment everything, clean and attacked", elem_id="everything")
            with gr.Row():
                every_orig_clean = gr.Image(label="Original model · clean", elem_id="every-orig-clean", **panel_args)
                every_orig_adv = gr.Image(label="Original model · adversarial", elem_id="every-orig-adv",
                                          **panel_args)
            with gr.Row():
                every_rob_clean = gr.Image(label="Robust model · clean", elem_id="every-rob-clean", **panel_args)
                every_rob_adv = gr.Image(label="Robust model · adversarial", elem_id="every-rob-adv", **panel_args)
            everything_md = gr.Markdown(elem_id="everything-md")
        with gr.Accordion("Train a robust adapter", open=False):
            gr.Markdown(TRAIN_HELP_MD)
            with gr.Row():
                train_budget = gr.Radio(BUDGET_CHOICES, value=BUDGET_PAPER, label="Budget", scale=3)
                train_k = SliderInput(1, MAX_VALUES_PER_LAYER, value=14, step=1, label="k: singular values per layer (spread)", scale=1)
            with gr.Row():
                train_steps = SliderInput(1, limits.MAX_TRAIN_STEPS, value=min(20, limits.MAX_TRAIN_STEPS), step=1,
                                          label="Training steps (2 images each)", elem_id="train-steps")
                train_source = gr.Radio(SOURCE_CHOICES, value=SOURCE_SCENES, label="Images")
            train_files = gr.File(file_count="multiple", file_types=["image"], type="filepath",
                                  label=f"Your images (2 to {limits.MAX_TRAIN_IMAGES}; the last is held out)",
                                  elem_id="train-files")
            with gr.Row():
                train_btn = gr.Button("Train", variant="primary", elem_id="train")
                train_cancel_btn = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
            train_md = gr.Markdown(elem_id="train-md")
            train_table = gr.Dataframe(headers=TRAIN_TABLE_HEADERS, label="Held-out check, before and after",
                                       interactive=False, elem_id="train-table")
            gr.Markdown(PUSH_HELP_MD)
            with gr.Row():
                push_repo = gr.Textbox(label="Hub repo id to push to", placeholder="owner/name", scale=3)
                push_token = gr.Textbox(label="Access token (write)", type="password", scale=3)
                push_private = gr.Checkbox(label="private", value=True, scale=1)
                push_btn = gr.Button("Push to the Hub", scale=1, elem_id="push")
            push_md = gr.Markdown(elem_id="push-md")

        # hidden inputs of API-only endpoints (clicks and examples by number)
        api_x = NumberInput(visible=False, label="x")
        api_y = NumberInput(visible=False, label="y")
        api_index = NumberInput(visible=False, label="The example index")
        api_click_btn = gr.Button(visible=False)
        api_example_btn = gr.Button(visible=False)

        # ---------------------------------------------------------------- wiring
        prompt_out = [session, canvas, status]
        image_out = [session, canvas, editor, status]
        canvas.input(lab.on_upload, [session, canvas, model], image_out, api_name="set_image", **LIGHT)
        gallery.select(lab.on_example, [session, model], image_out, api_visibility="private", **LIGHT)
        api_example_btn.click(lab.on_example_index, [session, model, api_index], image_out, api_name="load_example",
                              **LIGHT)
        canvas.select(lab.on_select, [session, mode, model], prompt_out, api_visibility="private",
                      show_progress="minimal", trigger_mode="multiple", **LIGHT)
        api_click_btn.click(lab.on_click, [session, mode, model, api_x, api_y], prompt_out, api_name="click",
                            trigger_mode="multiple", **LIGHT)
        undo_btn.click(lab.on_undo, [session, model], prompt_out, api_name="undo", **LIGHT)
        clear_btn.click(lab.on_clear, [session, model], prompt_out, api_name="clear", **LIGHT)
        paint_prompt_btn.click(lab.on_paint_prompt, [session, editor, model], prompt_out, api_name="paint_prompt",
                               **LIGHT)
        paint_gt_btn.click(lab.on_paint_ground_truth, [session, editor, model], prompt_out,
                           api_name="paint_ground_truth", **LIGHT)
        mode.change(lab.on_mode, mode, tabs, api_visibility="private", queue=False)

        model_inputs = [model, adapter_kind, hub_repo, hub_rev]
        adapter_inputs = [*model_inputs, session]  # the session: for the adapter it trained
        model.change(lab.on_model, adapter_inputs, [model_info, adapter_info, sv_plot], api_name="load_model",
                     **HEAVY).then(lab.on_refresh, [session, model], prompt_out, api_visibility="private", **LIGHT)
        adapter_kind.change(lab.on_adapter_kind, adapter_kind, hub_row, api_visibility="private", queue=False)
        adapter_kind.change(lab.on_adapter, adapter_inputs, [adapter_info, sv_plot], api_visibility="private",
                            **HEAVY)
        hub_btn.click(lab.on_adapter, adapter_inputs, [adapter_info, sv_plot], api_name="load_adapter", **HEAVY)
        demo.load(lab.on_model, adapter_inputs, [model_info, adapter_info, sv_plot], api_visibility="private",
                  **HEAVY)
        tour_next.click(lab.on_tour_next, tour_index, [tour_index, tour_md], api_visibility="private", queue=False)
        tour_back.click(lab.on_tour_back, tour_index, [tour_index, tour_md], api_visibility="private", queue=False)

        attack_inputs = [session, *model_inputs, attack, generator, eps, steps, seed, target]
        attack_event = run_btn.click(
            lab.attack_request, attack_inputs,
            [orig_clean, orig_adv, rob_clean, rob_adv, table, perturbation, perturbation_caption, adv_file,
             before_after, true_scale, bundle_file, timings],
            api_name="attack", scroll_to_output=True, **HEAVY)
        transfer_event = transfer_btn.click(lab.transfer_request, attack_inputs, [transfer_plot, transfer_md],
                                            api_name="transfer", **HEAVY)
        curve_event = curve_btn.click(lab.curve_request, attack_inputs, [curve_plot, curve_md], api_name="curve",
                                      **HEAVY)
        everything_event = everything_btn.click(
            lab.everything_request, attack_inputs,
            [every_orig_clean, every_orig_adv, every_rob_clean, every_rob_adv, everything_md],
            api_name="segment_everything", **HEAVY)
        cancel_btn.click(lab.on_cancel, None, timings, api_name="cancel", queue=False,
                         cancels=[attack_event, transfer_event, curve_event, everything_event])
        train_event = train_btn.click(
            lab.train_request, [session, model, train_budget, train_k, train_steps, train_source, train_files],
            [session, train_table, train_md, adapter_kind, adapter_info, sv_plot], api_name="train_adapter", **HEAVY)
        train_cancel_btn.click(lab.on_cancel, None, train_md, api_name="cancel_training", queue=False,
                               cancels=[train_event])
        push_btn.click(lab.on_push, [session, push_repo, push_token, push_private], push_md, api_name="push_adapter",
                       **HUB)
    demo.queue(default_concurrency_limit=2, max_size=limits.QUEUE_SIZE)  # beyond it, new requests are refused
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=None, help="address to listen on (default: 127.0.0.1, or "
                        "$GRADIO_SERVER_NAME, e.g. 0.0.0.0 on Hugging Face Spaces)")
    parser.add_argument("--port", type=int, default=None, help="port (default: 7860 or $GRADIO_SERVER_PORT)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--model", default=os.environ.get("SAMDEMO_MODEL") or DEFAULT_MODEL, choices=APP_MODELS,
                        help="model selected at start (default: $SAMDEMO_MODEL, else %(default)s)")
    parser.add_argument("--adapter-repo", default=os.environ.get("SAMDEMO_ADAPTER_REPO", ""),
                        help="robust model at start: a Hub adapter owner/name[@revision] (default: "
                             "$SAMDEMO_ADAPTER_REPO, else the shipped adapter)")
    distributed.add_device_argument(parser, default=os.environ.get("SAMDEMO_DEVICE", ""))
    args = parser.parse_args(argv)
    try:
        args.adapter = AdapterChoice.from_spec(args.adapter_repo)
        args.device = distributed.check_device(args.device)
    except (UserError, ValueError) as error:
        parser.error(str(error))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    limits.limit_malloc_arenas()  # before the server's threads start: memory stays flat under load
    lab = Lab(ModelManager(device=args.device))
    lab.preload(args.model)
    build_demo(lab, args.model, args.adapter).launch(server_name=args.host, server_port=args.port, share=args.share,
                                       theme=gr.themes.Soft(), css=CSS, **LAUNCH_LIMITS)


if __name__ == "__main__":
    main()
