"""samdemo web app (placeholder until the app issue lands): `python app.py`."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

with gr.Blocks(title="samdemo") as demo:
    gr.Markdown("# samdemo\nAdversarial robustness lab for Segment Anything. The app is being built.")

if __name__ == "__main__":
    demo.launch()
