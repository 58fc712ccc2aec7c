"""The web app behind ``app.py``, in layers that are each tested without a browser:

* :mod:`~samdemo.app.session`: the user's image and prompts (points, box, painted mask and ground
  truth) with undo, per user; no gradio;
* :mod:`~samdemo.app.models`: the original and robust engines, loaded once per process and shared;
* :mod:`~samdemo.app.actions`: the app's requests (a clean mask, an attack, a transfer matrix, a
  robustness adapter trained for the session) on top of :mod:`samdemo.pipeline` and
  :mod:`samdemo.train_adapter`, as typed outcomes;
* :mod:`~samdemo.app.render`: overlays, the perturbation picture and figures (numpy, OpenCV, matplotlib);
* :mod:`~samdemo.app.examples`: the bundled example images (only those listed in ``assets/examples.json``);
* :mod:`~samdemo.app.text`: what the widgets offer and the help text;
* :mod:`~samdemo.app.widgets`: gradio components that check what they are sent;
* :mod:`~samdemo.app.handlers`: :class:`~samdemo.app.handlers.Lab`, the gradio handlers: widget values in,
  one typed request, the outcome rendered out, every error as a readable message.

Limits (upload size, pixels, steps, epsilon, time per attack, session size) live in ``samdemo/limits.py``.
"""
