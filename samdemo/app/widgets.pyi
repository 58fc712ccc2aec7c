"""Gradio components that check what they are sent before any handler runs.

Gradio converts a Number's, a Slider's, an Image's or an ImageEditor's payload itself, before the
handler, and answers a bad one with a bare "Error". These components turn what they are sent into
the app's own message: numbers must be finite numbers, uploads reach the app's decoder unopened
(``samdemo.limits.read_image``), painted layers are size-checked before decoding.
"""

from __future__ import annotations

import io
import math
import warnings

import gradio as gr

from samdemo import limits


def upload_image(**kwargs) -> gr.Image:
    """A ``gr.Image`` whose upload reaches the handler as the path of the uploaded file, unopened.

    gr.Image opens every upload with Pillow before the handler runs, so a corrupt file or a
    decompression bomb would end in Gradio's bare "Error"; the app decodes uploads itself
    (:func:`samdemo.limits.read_image`: pixels counted before decoding, a message for every bad
    file). Gradio has already checked that the path is a file this user uploaded.

    The instance's ``preprocess`` is replaced rather than subclassed: Gradio writes a ``.pyi`` stub
    next to the module of every Component subclass when it is imported. Handlers must return plain
    values to it, not ``gr.Image(...)`` updates (Gradio rebuilds the component from its arguments
    then; ``image_mode=None`` keeps even that one handing over the unconverted file)."""
    image = gr.Image(type="filepath", image_mode=None, **kwargs)

    def preprocess(payload):
        if payload is None or payload.path is None:  # nothing, or a data: URL (gr.Image writes it to a file)
            return gr.Image.preprocess(image, payload)
        return str(payload.path)

    image.preprocess = preprocess
    return image


def paint_editor(**kwargs) -> gr.ImageEditor:
    """A ``gr.ImageEditor`` (numpy layers) that refuses a layer of more than ``limits.MAX_PIXELS``
    pixels before decoding it.

    Gradio decodes the editor's background, layers and composite itself, before the handler; only
    Pillow's own decompression-bomb guard (about 179 M pixels) would stop a small PNG that claims
    to be huge, and the app would hold several copies of it in memory. Pillow reads the size from
    the header, so the check costs nothing. (Instance patch, not a subclass: see :func:`upload_image`.)"""
    editor = gr.ImageEditor(type="numpy", **kwargs)
    convert = editor.convert_and_format_image

    def checked_convert(file, *args, **kw):
        if file is not None:
            from PIL import Image

            try:
                with warnings.catch_warnings():  # Pillow's bomb warning: the size is checked right below
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with Image.open(file.path if hasattr(file, "path") else io.BytesIO(file)) as image:
                        w, h = image.size
            except Exception:
                raise gr.Error("A painted layer is not a readable image.", print_exception=False) from None
            if w * h > limits.MAX_PIXELS:
                raise gr.Error(f"A painted layer is {w}x{h} px; at most {limits.MAX_PIXELS / 1e6:.0f} megapixels "
                               "are accepted (SAMDEMO_MAX_PIXELS).", print_exception=False)
        return convert(file, *args, **kw)

    editor.convert_and_format_image = checked_convert
    return editor


class _CheckedNumber:
    def preprocess(self, payload):
        if payload is None:
            return None
        what = self.label or "This value"
        try:
            number = float(payload)
        except (TypeError, ValueError):
            raise gr.Error(f"{what} must be a number (got {limits.quoted(payload)}).", print_exception=False) from None
        if not math.isfinite(number):
            raise gr.Error(f"{what} must be a finite number (got {limits.quoted(payload)}).", print_exception=False)
        return super().preprocess(number)

from gradio.events import Dependency

class NumberInput(_CheckedNumber, gr.Number):
    """``gr.Number`` with the app's message for values that are not numbers."""

    def get_block_name(self) -> str:
        return "number"  # the browser draws it with gradio's own Number; a new name would mean a custom component

    @classmethod
    def get_component_class_id(cls) -> str:
        return gr.Number.get_component_class_id()
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class SliderInput(_CheckedNumber, gr.Slider):
    """``gr.Slider`` with the app's message for values that are not numbers."""

    def get_block_name(self) -> str:
        return "slider"

    @classmethod
    def get_component_class_id(cls) -> str:
        return gr.Slider.get_component_class_id()
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component