"""Gradio input components that answer bad API values with the app's own message.

Gradio checks a Number's or Slider's value inside ``preprocess`` and, for a value of the wrong type
(``"abc"``, ``"7"``, NaN sent through the raw HTTP API), fails with a generic error before any
handler runs. These subclasses turn what they are sent into a finite number first, or refuse it
with a message that names the field; ``None`` goes through for the handler to judge.
"""

from __future__ import annotations

import math

import gradio as gr

from samdemo import limits


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