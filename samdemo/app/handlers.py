"""The app's gradio handlers (:class:`Lab`): widget values in, one typed request, the outcome rendered
out. Every error becomes a readable message (``gr.Error`` / ``gr.Warning``) and the server keeps
serving; nothing a visitor reads names a server path."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import gradio as gr
import numpy as np

from samdemo import limits
from samdemo.app.actions import (PANEL_KEYS, SOURCE_EXAMPLES, SOURCE_UPLOADS, TARGET_ROBUST, AttackJob, TrainJob,
                                 bundle_settings, clean_prediction, run_attack, run_curve, run_everything,
                                 run_training, run_transfer)
from samdemo.app.examples import Example, example_note, load_examples, read_example
from samdemo.app.models import ADAPTER_HUB, ADAPTER_TRAINED, AdapterChoice, ModelManager, check_repo_id
from samdemo.app.render import (adapter_figure, before_after, curve_figure, curve_markdown, masks_panel, panel_image,
                                panel_title, perturbation_image, perturbation_true_scale, render_overlay, save_bundle,
                                save_png, transfer_figure)
from samdemo.app.text import TABLE_HEADERS, TOUR_STEPS
from samdemo.app.session import (MODE_MASK, Session, add_click, clear_prompts, display_scale, normalize_image,
                                 painted_mask, set_image, set_painted, to_image_frame, undo, upscale, click_coordinate)
from samdemo.attacks.transfer import DEFAULT_ATTACKS, attack_rows
from samdemo.build import MODEL_REGISTRY, get_spec
from samdemo.robustness_curve import CURVE_EPS255
from samdemo.errors import AdapterError, AttackCancelled, ModelUnavailableError, PromptError, UserError

log = logging.getLogger("samdemo.app")
ATTACK_EXTRA_OUTPUTS = 7  # after the panels: table, perturbation, caption, PNG, before / after, true scale, bundle
EVERYTHING_SEGMENT_S = 120  # ZeroGPU time granted for segment everything's four segmentations, after the attack
TRANSFER_ROWS = len(attack_rows(DEFAULT_ATTACKS))  # the rows of the app's transfer matrix
DISCONNECT_POLL_S = 0.25  # how often a running heavy request checks that its client is still there


try:  # ZeroGPU on Hugging Face Spaces: heavy handlers get a GPU for their duration
    import spaces  # type: ignore

    def gpu(duration: int):
        return spaces.GPU(duration=duration)
except ImportError:  # anywhere else: no-op
    def gpu(duration: int):
        return lambda fn: fn


EXPECTED_ERRORS = (UserError, PromptError, ModelUnavailableError)


# An absolute path: a slash not preceded by a word character, ':' or '/' (so not "owner/name", "8/255"
# or a URL), then path characters.
_SERVER_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s'\"`,;:()<>\[\]]+/)*[^\s'\"`,;:()<>\[\]]*")


def without_server_paths(text: str) -> str:
    """``text`` with every absolute path cut to its last part: a message never tells a visitor where the
    server keeps its files (checkpoints, the Hub cache, uploads), nor whether a file exists there."""
    return _SERVER_PATH.sub(lambda match: Path(match.group(0)).name or "(a server folder)", text)


def error_message(error: Exception) -> str:
    """What the user reads about ``error`` (call it in the ``except`` block): expected problems as they are,
    running out of memory with what to change, anything else logged with its traceback. Server paths are
    cut from what the user reads (the log keeps them)."""
    if isinstance(error, EXPECTED_ERRORS):
        message = str(error)
    elif limits.is_out_of_memory(error):
        log.warning("out of memory: %s", error)
        message = limits.out_of_memory_message(error) + " The app is still running."
    else:
        log.exception("unexpected error in a handler")
        message = (f"Something went wrong ({type(error).__name__}: {error}). The app is still running: try again, "
                   "or with another image or model.")
    public = without_server_paths(message)
    if public != message:
        log.info("told the user (paths cut): %s", message)
    return public


def _copy(session: Session | None) -> Session:
    """Handlers edit a copy, so that a failed edit leaves the stored session untouched."""
    if session is None:
        return Session()
    return replace(session, history=list(session.history))


def _progress_fn(progress, label: str):
    """An attack's ``progress(t, T)`` -> a gr.Progress update."""
    if progress is None:
        return None

    def update(step: int, total: int) -> None:
        progress((int(step), int(total)), desc=f"{label}: step {int(step)}/{int(total)}", unit="steps")
    return update


def _rows_progress_fn(progress, rows: int):
    """The transfer matrix's ``progress(row label, t, T)`` -> overall progress over ``rows`` attacks."""
    seen: list[str] = []

    def update(label: str, step: int, total: int) -> None:
        if label not in seen:
            seen.append(label)
        done = (len(seen) - 1 + int(step) / max(int(total), 1)) / rows
        progress(min(done, 1.0), desc=f"{label} ({len(seen)}/{rows}): step {int(step)}/{int(total)}")
    return update


def _train_progress_fn(progress):
    """Training's ``progress(t, T, stage=text)`` -> a gr.Progress update."""
    def update(step: int, total: int, stage: str = "") -> None:
        progress((int(step), int(total)), desc=f"Training: {stage}", unit="steps")
    return update


class Lab:
    """The app's handlers, bound to one :class:`ModelManager` (app.py wires them to components)."""

    def __init__(self, manager: ModelManager | None = None, examples: Sequence[Example] | None = None):
        self.manager = manager or ModelManager()
        # Adapters trained in the app: one folder per run under a temporary root the server owns (removed at
        # exit); the most recent limits.MAX_SESSIONS are kept, and a session's own when it trains again or ends.
        self._trained_root = tempfile.TemporaryDirectory(prefix="samdemo-trained-")
        self._trained_folders: list[Path] = []
        self._trained_lock = threading.Lock()  # gr.State's delete callback runs outside the request lanes
        self.examples = list(load_examples() if examples is None else examples)
        self.curve_eps255 = CURVE_EPS255  # the robustness curve's epsilons (1/255 units)
        self.everything_settings: dict = {}  # the mask generator's settings, over segment_everything's defaults
        self._cancels: dict[str, threading.Event] = {}
        self._cancels_lock = threading.Lock()
        # ZeroGPU (Hugging Face Spaces): heavy handlers hold a GPU while they run; a no-op elsewhere.
        self.on_attack = gpu(int(limits.ATTACK_TIME_LIMIT_S))(self.on_attack)
        self.on_transfer = gpu(int(limits.TRANSFER_TIME_LIMIT_S))(self.on_transfer)
        self.on_curve = gpu(int(limits.CURVE_TIME_LIMIT_S))(self.on_curve)
        self.on_everything = gpu(int(limits.ATTACK_TIME_LIMIT_S) + EVERYTHING_SEGMENT_S)(self.on_everything)
        self.on_train = gpu(int(limits.TRAIN_TIME_LIMIT_S))(self.on_train)

    # ----------------------------------------------------------------- helpers
    def _error(self, error: Exception) -> gr.Error:
        """A readable gr.Error for ``error`` (see :func:`error_message`)."""
        return gr.Error(error_message(error), print_exception=False)

    def _warning(self, error: Exception) -> str:
        """For handlers that report in their outputs rather than fail: a toast, and the text to show."""
        message = error_message(error)
        gr.Warning(message)
        return f"⚠️ {message}"

    def canvas(self, session: Session, model: str, note: str = "") -> tuple[np.ndarray | None, str]:
        """The prompt canvas (image, prompts, clean mask of the original model) and a status line."""
        if session.image is None:
            return None, note or "Upload or paste an image, or pick an example below."
        lines = [note] if note else []
        mask = None
        if session.prompts.has_prompt:
            try:
                result = clean_prediction(self.manager.engine(model), session.image, session.prompts)
            except (PromptError, ModelUnavailableError) as error:  # the prompt is kept; say why there is no mask
                lines.append(f"⚠️ {error}")
            else:
                mask = session.clean_mask = result.mask
                h, w = mask.shape
                lines.append(f"Clean mask of **{model}**: {int(mask.sum())} px ({100 * mask.mean():.1f} % of the "
                             f"image), the model's own IoU estimate {result.iou_pred:.2f}, {1000 * result.seconds:.0f} ms.")
        lines.append(f"Prompts: {session.prompts.describe()}.")
        return render_overlay(session.image, mask, session.prompts), "  \n".join(lines)

    def _editor_value(self, session: Session):
        if session.image is None:
            return None
        return {"background": upscale(session.image, display_scale(session.image.shape[:2])), "layers": [],
                "composite": None}

    # ----------------------------------------------------------------- image
    def on_upload(self, session, image, model):
        """A new image was uploaded or pasted (None: the user cleared it)."""
        try:
            session = _copy(session)
            if image is None:
                session = Session(trained=session.trained)
                return session, None, None, "Upload or paste an image, or pick an example below."
            note = set_image(session, image)
            canvas, status = self.canvas(session, model, note)
            return session, canvas, self._editor_value(session), status
        except Exception as error:
            raise self._error(error) from None

    def on_example(self, session, model, evt: gr.SelectData = None):
        """An example thumbnail was clicked (``evt.index`` indexes ``self.examples``; no other files)."""
        try:
            session = _copy(session)
            index = getattr(evt, "index", evt)
            if isinstance(index, (list, tuple)):
                index = index[0]
            image, name = read_example(self.examples, index)
            set_image(session, image, name)
            example = self.examples[int(float(index))]
            note = example_note(example, get_spec(model).embedded) if model in MODEL_REGISTRY else ""
            canvas, status = self.canvas(session, model, f"Loaded example **{name}**: {example.caption}"
                                         + (f" {note}" if note else ""))
            return session, canvas, self._editor_value(session), status
        except Exception as error:
            raise self._error(error) from None

    def on_example_index(self, session, model, index: float):
        """API form of :meth:`on_example` (index into the example list; read_example refuses a bad one)."""
        return self.on_example(session, model, index)

    # ----------------------------------------------------------------- prompts
    def on_select(self, session, mode, model, evt: gr.SelectData = None):
        """A click on the canvas: ``evt.index`` is (x, y) in the displayed image's pixels."""
        index = getattr(evt, "index", None)
        if not isinstance(index, (list, tuple)) or len(index) != 2:
            raise gr.Error("This click carried no position; click inside the image.", print_exception=False)
        session_image = session.image if session is not None else None
        if session_image is None:
            raise gr.Error("Upload or paste an image first, or pick one of the examples.", print_exception=False)
        try:
            px, py = click_coordinate(index[0]), click_coordinate(index[1])
        except UserError as error:
            raise self._error(error) from None
        x, y = to_image_frame(px, py, session_image.shape[:2])
        return self.on_click(session, mode, model, x, y)

    def on_click(self, session, mode, model, x, y):
        """A click at (x, y) in the original image's pixels (also the API's ``/click``)."""
        try:
            session = _copy(session)
            if mode == MODE_MASK:
                return (session, *self.canvas(session, model, "Mask mode: paint in the **Paint a mask** tab, then "
                                                              "press *Use as mask prompt*."))
            note = add_click(session, mode, x, y)
            return (session, *self.canvas(session, model, note))
        except Exception as error:
            raise self._error(error) from None

    def on_undo(self, session, model):
        try:
            session = _copy(session)
            return (session, *self.canvas(session, model, undo(session)))
        except Exception as error:
            raise self._error(error) from None

    def on_clear(self, session, model):
        try:
            session = _copy(session)
            return (session, *self.canvas(session, model, clear_prompts(session)))
        except Exception as error:
            raise self._error(error) from None

    def on_paint(self, session, editor_value, model, as_ground_truth: bool):
        try:
            session = _copy(session)
            image = session.require_image()
            note = set_painted(session, painted_mask(editor_value, image.shape[:2]), as_ground_truth)
            return (session, *self.canvas(session, model, note))
        except Exception as error:
            raise self._error(error) from None

    def on_paint_prompt(self, session, editor_value, model):
        return self.on_paint(session, editor_value, model, False)

    def on_paint_ground_truth(self, session, editor_value, model):
        return self.on_paint(session, editor_value, model, True)

    def on_mode(self, mode):
        """Mask mode opens the Paint tab; the other modes the Click tab."""
        return gr.Tabs(selected="paint" if mode == MODE_MASK else "click")

    def on_refresh(self, session, model):
        """Redraw the canvas (after the model changed)."""
        try:
            return (session, *self.canvas(_copy(session), model))
        except Exception as error:
            raise self._error(error) from None

    # ----------------------------------------------------------------- models
    def preload(self, model: str, adapter: AdapterChoice = AdapterChoice(), examples: bool = True) -> None:
        """Before serving: load the model (and its adapter) and embed the examples with both, so that the
        first click on an example is as fast as the next ones. Problems are only logged: the UI shows them."""
        engines = []
        try:
            engines.append(self.manager.engine(model))
            robust = self.manager.robust(model, adapter)
            engines += [robust.engine] if robust is not None else []
        except Exception as error:  # the app still starts; the UI shows the message on load
            log.warning("could not preload %s (%s): %s", model, adapter.label, error)
        for index in range(len(self.examples) if examples else 0):
            image = normalize_image(read_example(self.examples, index)[0])[0]
            for engine in engines:
                engine.embed_image(image)

    def on_adapter_kind(self, kind):
        """Show the Hub fields only for a Hub adapter."""
        return gr.Row(visible=kind == ADAPTER_HUB)

    def on_model(self, model, kind, repo_id, revision, session=None, progress=gr.Progress(track_tqdm=True)):
        """Load the model (downloading it if needed) and its adapter; returns (model info, adapter info, plot).
        ``session``: for the adapter it trained (the "trained" choice)."""
        try:
            spec = get_spec(model)
            if not self.manager.is_loaded(model):
                progress(0.05, desc=f"Loading {model}" + (f" (downloading up to {spec.download_mb} MB)" if spec.hub else ""))
            t0 = time.perf_counter()
            engine = self.manager.engine(model)
            n_params = sum(p.numel() for p in engine.model.parameters())
            info = (f"**{model}**: {spec.description}; {n_params / 1e6:.1f} M parameters, {engine.image_size} px input, "
                    f"on {engine.device.type.upper()} (ready in {time.perf_counter() - t0:.1f} s). "
                    f"**What it is good at**: {spec.suited_for}.")
            if engine.device.type == "cpu" and spec.hub is not None:
                info += " Full-size models are slow on a CPU: an attack step can take many seconds."
        except Exception as error:
            return self._warning(error), "", None
        adapter_md, figure = self.on_adapter(model, kind, repo_id, revision, session)
        return info, adapter_md, figure

    def on_adapter(self, model, kind, repo_id, revision, session=None):
        """Load the adapter; returns (markdown with its parameter count, singular-value figure). ``session``:
        for the adapter it trained (the "trained" choice)."""
        try:
            choice = AdapterChoice.parse(kind, repo_id, revision, getattr(session, "trained", None))
            robust = self.manager.robust(model, choice)
            if robust is None:
                return ("No adapter: the *robust* panels stay empty and only the original model is attacked.", None)
            count = f"{robust.trainable:,} trainable values" if robust.trainable is not None else "its trainable values"
            total = sum(p.numel() for p in robust.engine.model.parameters())
            md = (f"**Adapter** ({robust.source}): {robust.adapter.noun}, {count}, "
                  f"{100 * (robust.trainable or 0) / max(total, 1):.3f} % of the model's {total / 1e6:.1f} M. The plot "
                  "shows the singular values of the adapted weights before and after it.")
            return md, adapter_figure(robust)
        except Exception as error:
            return self._warning(error), None

    # ----------------------------------------------------------------- attack
    def _cancel_event(self, request) -> tuple[str, threading.Event]:
        key = getattr(request, "session_hash", None) or "default"
        with self._cancels_lock:
            event = self._cancels.setdefault(key, threading.Event())
            event.clear()
        return key, event

    def on_cancel(self, request: gr.Request = None):
        key = getattr(request, "session_hash", None) or "default"
        with self._cancels_lock:
            event = self._cancels.get(key)
        if event is None:
            return "No attack is running."
        event.set()
        return "Cancelling: the work stops after its current step."

    def _cancellable(self, request, work):
        """``work(cancel event)`` with this session's cancel event (Cancel sets it); returns None when the user
        cancelled, and turns every error into a readable gr.Error."""
        key, cancel = self._cancel_event(request)
        try:
            return work(cancel)
        except AttackCancelled:
            return None
        except Exception as error:
            raise self._error(error) from None
        finally:
            with self._cancels_lock:
                if self._cancels.get(key) is cancel:
                    del self._cancels[key]

    def _run_heavy(self, request, session, widgets: dict, work):
        """What the attack handlers share: check the inputs, build the :class:`AttackJob` from the widgets'
        values, then ``work(job, image, prompts, cancel event)`` with this session's cancel event. Returns None
        when the user cancelled."""
        def attack_work(cancel):
            current = session or Session()
            image = current.require_image()
            job = AttackJob.from_widgets(**widgets, trained=current.trained)
            return work(job, image, current.prompts, cancel)

        return self._cancellable(request, attack_work)

    def on_attack(self, session, model, kind, repo_id, revision, attack, generator, eps255, steps, seed, target,
                  request: gr.Request = None, progress=gr.Progress()):
        """Run an attack; returns the 4 panels, the table, the perturbation (amplified) and its caption, the
        PNG, the before / after pair, the perturbation at true scale, the bundle zip, and the timings."""
        def work(job, image, prompts, cancel):
            progress(0.0, desc="Preparing the attack")
            outcome = run_attack(self.manager, job, image, prompts, _progress_fn(progress, f"{attack} · {generator}"),
                                 cancel)
            settings, caveats = bundle_settings(job, prompts)
            return outcome, image, prompts, save_bundle(outcome, image, prompts, settings, caveats, TABLE_HEADERS)

        done = self._run_heavy(request, session, _widgets(model, kind, repo_id, revision, attack, generator, eps255,
                                                          steps, seed, target), work)
        if done is None:
            gr.Warning("Attack cancelled.")
            return self._empty_results("Attack cancelled before it finished.")
        outcome, image, prompts, bundle = done
        panels = [gr.Image(value=panel_image(outcome.panels[k], image, outcome.adversarial, prompts),
                           label=panel_title(outcome.panels[k])) for k in PANEL_KEYS]
        table = [[_fmt(v) for v in row] for row in outcome.table]
        perturbation, caption = perturbation_image(image, outcome.adversarial, outcome.job.request.eps255)
        t = outcome.timings
        steps_run = t["steps_run"]
        per_step = f", {1000 * t['attack'] / steps_run:.0f} ms/step" if steps_run else ""
        device = self.manager.engine(model).device.type.upper()
        timings = (f"**Timings** ({device}): attack {t['attack']:.2f} s ({steps_run} step{'s' * (steps_run != 1)}{per_step}), "
                   f"4 predictions {t['predict']:.2f} s, total {t['total']:.2f} s. Crafted on the "
                   f"**{outcome.target_name}** model; IoUs in the panels are against {outcome.reference}.")
        return (*panels, table, perturbation, caption, save_png(outcome.adversarial),
                before_after(image, outcome.adversarial), perturbation_true_scale(image, outcome.adversarial), bundle,
                timings)

    def _empty_results(self, message: str):
        """Leave the previous results in place (gr.skip) and say why."""
        return (*[gr.skip() for _ in range(len(PANEL_KEYS) + ATTACK_EXTRA_OUTPUTS)], message)

    async def _until_stopped(self, handler, inputs: tuple, request, progress):
        """Run a heavy handler in a worker thread until it returns, and stop it early when the request ends
        early: Gradio's own cancel (e.g. ``gradio_client``'s ``job.cancel()``) cancels this coroutine, and a
        client that goes away (closed tab, dropped connection, killed client) leaves its queue event dead,
        which is checked every ``DISCONNECT_POLL_S``. Either way the session's cancel event is set and this
        returns only once the thread has stopped (within one attack step): Gradio frees the
        one-attack-at-a-time lane only when this returns. A time limit ends the thread from inside
        (:func:`samdemo.limits.with_time_limit`)."""
        event = _queue_event()
        work = asyncio.ensure_future(asyncio.to_thread(handler, *inputs, request, progress))
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
                if not work.done() and event is not None and (event.closed or not event.alive):
                    log.info("the client of session %s went away: stopping its work",
                             getattr(request, "session_hash", None))
                    self.on_cancel(request)
                    break
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            self.on_cancel(request)
            await asyncio.gather(work, return_exceptions=True)  # stops within one attack step
            raise

    async def attack_request(self, session, model, kind, repo_id, revision, attack, generator, eps255, steps, seed,
                             target, request: gr.Request = None, progress=gr.Progress()):
        """:meth:`on_attack` as the app serves it (stops its work when the request is cancelled)."""
        return await self._until_stopped(self.on_attack, (session, model, kind, repo_id, revision, attack, generator,
                                                          eps255, steps, seed, target), request, progress)

    async def transfer_request(self, session, model, kind, repo_id, revision, attack, generator, eps255, steps, seed,
                               target, request: gr.Request = None, progress=gr.Progress()):
        """:meth:`on_transfer` as the app serves it (stops its work when the request is cancelled)."""
        return await self._until_stopped(self.on_transfer, (session, model, kind, repo_id, revision, attack,
                                                            generator, eps255, steps, seed, target), request, progress)

    async def curve_request(self, session, model, kind, repo_id, revision, attack, generator, eps255, steps, seed,
                            target, request: gr.Request = None, progress=gr.Progress()):
        """:meth:`on_curve` as the app serves it (stops its work when the request is cancelled)."""
        return await self._until_stopped(self.on_curve, (session, model, kind, repo_id, revision, attack, generator,
                                                         eps255, steps, seed, target), request, progress)

    async def everything_request(self, session, model, kind, repo_id, revision, attack, generator, eps255, steps,
                                 seed, target, request: gr.Request = None, progress=gr.Progress()):
        """:meth:`on_everything` as the app serves it (stops its work when the request is cancelled)."""
        return await self._until_stopped(self.on_everything, (session, model, kind, repo_id, revision, attack,
                                                              generator, eps255, steps, seed, target), request, progress)

    def on_curve(self, session, model, kind, repo_id, revision, attack, generator, eps255, steps, seed, target,
                 request: gr.Request = None, progress=gr.Progress()):
        """The robustness curve of the user's object (the attack widgets' attack, generator, steps and seed at
        every ε of ``self.curve_eps255``; the ε slider and the target are not used): returns (figure, markdown)."""
        def work(job, image, prompts, cancel):
            progress(0.0, desc="Preparing the robustness curve")
            return run_curve(self.manager, job, image, prompts, self.curve_eps255,
                             _progress_fn(progress, "Robustness curve"), cancel)

        outcome = self._run_heavy(request, session, _widgets(model, kind, repo_id, revision, attack, generator,
                                                             eps255, steps, seed, target), work)
        if outcome is None:
            gr.Warning("Robustness curve cancelled.")
            return gr.skip(), "Robustness curve cancelled before it finished."
        return (curve_figure(outcome.curve, outcome.reference),
                curve_markdown(outcome.curve, outcome.reference, outcome.seconds))

    def on_everything(self, session, model, kind, repo_id, revision, attack, generator, eps255, steps, seed, target,
                      request: gr.Request = None, progress=gr.Progress()):
        """"Segment everything" on the clean and the adversarial image with both models (the attack crafted
        on the target model): returns 4 pictures (original clean / adversarial, robust clean / adversarial;
        None without an adapter) and a markdown summary of the counts of masks and survivors."""
        def stage(what: str, k: int, total: int) -> None:
            progress(k / total, desc=f"Segment everything: {what} ({k + 1}/{total})")

        def work(job, image, prompts, cancel):
            progress(0.0, desc="Preparing the attack")
            return image, run_everything(self.manager, job, image, prompts,
                                         _progress_fn(progress, f"{attack} · {generator}"), stage, cancel,
                                         **self.everything_settings)

        done = self._run_heavy(request, session, _widgets(model, kind, repo_id, revision, attack, generator, eps255,
                                                          steps, seed, target), work)
        if done is None:
            gr.Warning("Segment everything cancelled.")
            return (*[gr.skip()] * 4, "Segment everything cancelled before it finished.")
        image, outcome = done
        pictures, lines = [], []
        for name in ("original", "robust"):
            comparison = outcome.comparisons.get(name)
            if comparison is None:
                pictures += [None, None]
                continue
            pictures += [masks_panel(image, comparison.clean, f"{len(comparison.clean)} masks"),
                         masks_panel(outcome.adversarial, comparison.adversarial,
                                     f"{len(comparison.adversarial)} masks, {int(comparison.survived.sum())} survive")]
            lines.append(f"- **{name.capitalize()} model**: {comparison.summary} "
                         f"({_share(comparison)} of the clean masks matched at IoU ≥ 0.5).")
        request_ = outcome.request
        md = (f"**Segment everything** (SAM's automatic mask generator, a grid of point prompts) on the clean and "
              f"the adversarial image; the {request_.attack} attack ({request_.generator.upper()}, "
              f"ε = {request_.eps255:g}/255, {request_.steps} steps) was crafted on the **{outcome.target}** model"
              + (" without any prompt" if not request_.uses_prompts else " with your prompt") + ".\n"
              + "\n".join(lines) + f"\n\nAttack {outcome.timings['attack']:.1f} s, segmentation "
              f"{outcome.timings['segment']:.1f} s.")
        return (*pictures, md)

    def on_transfer(self, session, model, kind, repo_id, revision, attack, generator, eps255, steps, seed, target,
                    request: gr.Request = None, progress=gr.Progress()):
        def work(job, image, prompts, cancel):
            progress(0.0, desc="Preparing the transfer matrix")
            return job, run_transfer(self.manager, job, image, prompts, _rows_progress_fn(progress, TRANSFER_ROWS),
                                     cancel)

        done = self._run_heavy(request, session, _widgets(model, kind, repo_id, revision, attack, generator, eps255,
                                                          steps, seed, target), work)
        if done is None:
            gr.Warning("Transfer matrix cancelled.")
            return gr.skip(), "Transfer matrix cancelled before it finished."
        job, outcome = done
        md = ("Each row is a perturbation (the *mask* attack is crafted once per prompt type: `mask@box` used "
              "the object's box); each column the prompt type then used to segment the attacked image. Cells: "
              "IoU with the clean mask of the same prompt (red = the attack worked there). A prompt-free attack "
              f"that is red across its whole row transfers to every prompt type. {outcome.seconds:.1f} s.")
        if outcome.matrix_gt is not None:
            md += " IoU with your ground truth: " + "; ".join(
                f"{row} " + "/".join(f"{v:.2f}" for v in values) for row, values in zip(outcome.rows, outcome.matrix_gt))
        who = "robust" if job.target == TARGET_ROBUST else "original"
        attack_request = job.request
        title = (f"Crafted and evaluated on the {who} model\n{attack_request.generator.upper()}, "
                 f"ε = {attack_request.eps255:g}/255, {attack_request.steps} steps")
        return transfer_figure(outcome.matrix, outcome.rows, outcome.cols, title), md

    # ----------------------------------------------------------------- training
    def training_images(self, model: str, source: str, files) -> list[np.ndarray] | None:
        """The images of a training run: the bundled examples that suit ``model``, the uploaded files (paths
        handed over by gr.File: only this user's uploads), or None for generated scenes."""
        if source == SOURCE_EXAMPLES:
            embedded = get_spec(model).embedded
            return [read_example(self.examples, i)[0] for i, example in enumerate(self.examples)
                    if example.suits == "all" or not embedded]
        if source != SOURCE_UPLOADS:
            return None
        files = [f for f in (files or []) if f]
        if len(files) < 2:
            raise UserError(f"Upload at least 2 images to train on your own images (got {len(files)}): one or more "
                            "to train on and one held out for the before / after check. Or choose the examples or "
                            "generated scenes.")
        if len(files) > limits.MAX_TRAIN_IMAGES:
            raise UserError(f"{len(files)} images uploaded; at most {limits.MAX_TRAIN_IMAGES} are used for training "
                            "(SAMDEMO_MAX_TRAIN_IMAGES).")
        return [limits.read_image(getattr(f, "name", f))[0] for f in files]

    def _new_trained_folder(self) -> Path:
        folder = Path(tempfile.mkdtemp(prefix="adapter-", dir=self._trained_root.name))
        with self._trained_lock:
            self._trained_folders.append(folder)
            oldest = self._trained_folders[:-limits.MAX_SESSIONS]
            del self._trained_folders[:-limits.MAX_SESSIONS]
        for old in oldest:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def _drop_trained(self, trained) -> None:
        """Forget a session's trained adapter: its robust model and its folder."""
        if trained is None:
            return
        self.manager.forget(trained)
        self._drop_folder(trained.folder)

    def on_session_end(self, session) -> None:
        """gr.State's delete callback: an idle session's trained adapter goes with it."""
        self._drop_trained(getattr(session, "trained", None))

    def on_train(self, session, model, budget, values_per_layer, steps, source, files, request: gr.Request = None,
                 progress=gr.Progress()):
        """Train a robustness adapter for this session (``samdemo.train_adapter`` on a private copy of the
        model): returns the session (now holding the adapter), the held-out table before / after, a summary,
        the Defense choice ("trained": the next attack uses it), its adapter info and singular-value plot."""
        folders: list[Path] = []

        def work(cancel):
            job = TrainJob.from_widgets(model=model, budget=budget, values_per_layer=values_per_layer, steps=steps,
                                        source=source)
            images = self.training_images(model, source, files)
            progress(0.0, desc="Training: the original model's held-out check" + (
                " (and its segments of your images, the targets)" if images is not None else ""))
            folders.append(self._new_trained_folder())
            return run_training(self.manager, job, images, folders[0], _train_progress_fn(progress), cancel)

        outcome = None
        try:
            outcome = self._cancellable(request, work)
        finally:
            if outcome is None:  # failed or cancelled: nothing of the run is kept
                for folder in folders:
                    self._drop_folder(folder)
        if outcome is None:
            gr.Warning("Training cancelled.")
            return (*[gr.skip()] * 5, "Training cancelled before it finished; the robust model is unchanged.")
        session = _copy(session)
        if session.trained is not None:
            self._drop_trained(session.trained)
        session.trained = outcome.trained
        rows = [[row["condition"], *(_fmt(float(row[k])) for k in ("point", "box", "mask"))] for row in outcome.table]
        attacked = [row for row in outcome.table if "attack" in row["condition"]]
        change = ""
        if len(attacked) == 2:
            change = (f" Under the attack, box-prompt mIoU went from {attacked[0]['box']:.3f} (original) to "
                      f"{attacked[1]['box']:.3f} (adapted).")
        device = self.manager.engine(model).device.type.upper()
        md = (f"**Trained** {outcome.trained.description} on {outcome.log['data']}, in {outcome.seconds:.0f} s "
              f"({device}).{change} This adapter is now this session's **robust model**: the next attack, curve or "
              f"segment-everything uses it (Defense: *trained in this session*). {outcome.note}")
        adapter_md, figure = self.on_adapter(model, ADAPTER_TRAINED, "", "", session)
        return session, rows, md, ADAPTER_TRAINED, adapter_md, figure

    def _drop_folder(self, folder: Path) -> None:
        with self._trained_lock:
            if folder in self._trained_folders:
                self._trained_folders.remove(folder)
        shutil.rmtree(folder, ignore_errors=True)

    async def train_request(self, session, model, budget, values_per_layer, steps, source, files,
                            request: gr.Request = None, progress=gr.Progress()):
        """:meth:`on_train` as the app serves it (stops its work when the request is cancelled)."""
        return await self._until_stopped(self.on_train, (session, model, budget, values_per_layer, steps, source,
                                                         files), request, progress)

    def on_push(self, session, repo_id, token, private=False):
        """Push this session's trained adapter to the Hugging Face Hub with the visitor's own token (used for
        this upload only: never stored, logged or shown); returns a markdown line with the commit."""
        from samdemo.defense import WEIGHTS_FILE
        from samdemo.hub import push_adapter

        token = (token or "").strip()
        try:
            trained = getattr(session, "trained", None)
            if trained is None:
                raise UserError("Train an adapter first (above); then it can be pushed to the Hub.")
            repo_id = check_repo_id(repo_id)
            if not token:
                raise UserError("Paste a Hugging Face access token with write permission "
                                "(huggingface.co/settings/tokens): the app never pushes with the server's own login.")
            if not (trained.folder / WEIGHTS_FILE).is_file():
                raise UserError("The adapter trained in this session is no longer kept on the server: train it again.")
            info = push_adapter(trained.folder, repo_id, token=token, private=bool(private) or None)
        except UserError as error:
            raise self._error(error) from None
        except Exception as error:
            message = _without(_hub_error(error, repo_id), token)
            log.warning("pushing an adapter to %s failed: %s", repo_id, message)
            raise gr.Error(message, print_exception=False) from None
        return (f"Pushed to **{repo_id}** at commit `{info.oid}`. Load it anywhere with Defense *from the Hugging "
                f"Face Hub* (repo id `{repo_id}`, revision `{info.oid}`), or "
                f"`samdemo.hub.load_adapter_from_hub(engine, \"{repo_id}\", revision=\"{info.oid}\")`.")

    # ----------------------------------------------------------------- tour
    def on_tour(self, index, move: int = 0):
        """The guided tour's step ``index`` moved by ``move`` (clamped): returns (new index, its text)."""
        try:
            index = int(index) + int(move)
        except (TypeError, ValueError):
            index = 0
        index = min(max(index, 0), len(TOUR_STEPS) - 1)
        return index, f"**Step {index + 1} of {len(TOUR_STEPS)}.** {TOUR_STEPS[index]}"

    def on_tour_next(self, index):
        return self.on_tour(index, 1)

    def on_tour_back(self, index):
        return self.on_tour(index, -1)


def _queue_event():
    """The Gradio queue event of the request being handled (None outside Gradio's queue).

    Gradio tells a running function nothing when its client goes away: the queue marks the event
    dead (``alive`` False when the client's event stream drops, ``closed`` when the browser's
    heartbeat stops) and only drops its output. ``gr.Request.is_disconnected()`` is no help here,
    as it asks about the HTTP request that queued the event, which ended long before. So the event
    is looked up where Gradio keeps it (gradio is pinned; tests/test_reliability.py checks this
    through a served app)."""
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    events = getattr(getattr(blocks, "_queue", None), "event_ids_to_events", None)
    return events.get(event_id) if events is not None and event_id else None


def _share(comparison) -> str:
    total = len(comparison.clean)
    return "—" if not total else f"{100 * int(comparison.survived.sum()) / total:.0f} %"


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _widgets(model, kind, repo_id, revision, attack, generator, eps255, steps, seed, target) -> dict:
    """The attack widgets' values, by name, for :meth:`AttackJob.from_widgets`."""
    return dict(model=model, adapter_kind=kind, repo_id=repo_id, revision=revision, attack=attack,
                generator=generator, eps255=eps255, steps=steps, seed=seed, target=target)


def _hub_error(error: Exception, repo_id: str) -> str:
    """What the visitor reads when pushing failed."""
    if isinstance(error, AdapterError):
        return str(error)
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status in (401, 403):
        return (f"The Hub refused the token (HTTP {status}): use a token with write permission for {repo_id}'s "
                "owner.")
    if status is not None:
        return f"The Hub answered HTTP {status} for {repo_id}: {error}"
    return f"Pushing to {repo_id} failed ({type(error).__name__}: {error}). The adapter is still here: try again."


def _without(text: str, secret: str) -> str:
    """``text`` with ``secret`` (a token) masked: a message must never repeat it."""
    return text.replace(secret, "***") if secret else text
