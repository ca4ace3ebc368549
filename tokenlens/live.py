"""A live explorer for Jupyter: change the prompt, the target or the position and the attribution recomputes.

:func:`explore` returns an ipywidgets ``VBox``: a prompt ``Text``, a target ``Text`` (empty: the model's top-1
token), a position ``IntText`` (``-1``: the last token; negative counts from the end) and, below them, a view
of the current result: the same HTML fragment that a :class:`~tokenlens.attribution.result.LogitAttribution`
shows in a cell (:func:`tokenlens.report.notebook.attribution_html`), with its explorer
(:mod:`tokenlens.report.explorer`) running on it.

Why the view is an anywidget and not ipywidgets' ``HTML``: that widget sets ``innerHTML``, which does not run
a ``<script>`` (jupyter-widgets/ipywidgets#3079; only Colab runs some, and not in a nested box, #3654), so the
explorer would not run and the tables would be static. The view's ES module (``_esm``, built here from the
explorer's own script, no network) sets the fragment — the report's escaped HTML — and then runs
:data:`tokenlens.report.explorer.SCRIPT` on it, the script's ``document.currentScript`` being the fragment's
own (inert) ``<script>`` element, so the script acts inside that fragment exactly as it does in a notebook
output or an opened report. No inline script is executed: the code arrives as the widget's module, which the
front end loads as it loads any anywidget's. Checked by hand in JupyterLab 4.6 (ipywidgets 8.1, anywidget
0.11); VS Code and Colab were not tried.

It runs a model (through :func:`tokenlens.attribution.direct.attribute`) and renders the result, so it
sits above the reports (which never run one), beside the command line. ipywidgets and anywidget are
imported only when :func:`explore` is called (the optional extra ``notebook``).
"""

from __future__ import annotations

import functools
import html
from typing import Any

from tokenlens.attribution.direct import attribute
from tokenlens.attribution.request import AttributionRequest
from tokenlens.errors import TokenlensError
from tokenlens.report.explorer import SCRIPT
from tokenlens.report.notebook import attribution_html

INSTALL = "pip install 'tokenlens[notebook]'"
"""How to get the live explorer's dependencies."""

ESM_TEMPLATE = """\
// tokenlens live explorer view: shows a report fragment and runs the report's explorer script on it.
function explore(marker) {
  // The explorer finds its container from document.currentScript: here, the fragment's own inert script.
  const document = new Proxy(globalThis.document, {
    get(target, key) {
      if (key === "currentScript") { return marker; }
      const value = Reflect.get(target, key, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
/*SCRIPT*/
}
function render({ model, el }) {
  const show = () => {
    el.innerHTML = model.get("value");  // the report's own HTML: every token in it is escaped
    const marker = el.querySelector(".tokenlens-report script:not([type])");
    if (marker) { explore(marker); }
  };
  show();
  model.on("change:value", show);
  return () => model.off("change:value", show);
}
export default { render };
"""
"""The view's ES module; ``/*SCRIPT*/`` becomes :data:`tokenlens.report.explorer.SCRIPT`."""


def view_esm(script: str = SCRIPT) -> str:
    """The live view's ES module: :data:`ESM_TEMPLATE` with the explorer ``script`` in it."""
    return ESM_TEMPLATE.replace("/*SCRIPT*/", script)


def error_html(message: str) -> str:
    """A one-line error for the view, escaped."""
    return (
        f'<p class="tokenlens-error" style="color:#b00020;margin:.5em 0 .5em 1em">{html.escape(message)}</p>'
    )


@functools.cache
def _classes() -> tuple[type, type]:
    """The widget classes ``(Explorer, ExplorerView)``, defined on first use so that ipywidgets and
    anywidget are imported only then."""
    try:
        import anywidget
        import ipywidgets
        import traitlets
    except ImportError as err:
        raise TokenlensError(f"the live explorer needs ipywidgets and anywidget: {INSTALL}") from err

    class ExplorerView(anywidget.AnyWidget):
        """Shows ``value`` (a report fragment) and runs the report's explorer script on it."""

        _esm = view_esm()
        value = traitlets.Unicode("").tag(sync=True)

    class Explorer(ipywidgets.VBox):
        """The live explorer (see :func:`explore`): ``prompt``, ``target`` and ``position`` are its
        controls, ``view`` shows the result, ``result`` is the last good result (``None`` before one),
        ``error`` the message of the last bad input (``None`` when the view shows ``result``)."""

        def __init__(
            self, loaded: Any, prompt: str, target: str, position: int, options: dict[str, Any]
        ) -> None:
            self.loaded, self.options = loaded, options
            self.result: Any = None
            self.error: str | None = None
            self.prompt = ipywidgets.Text(
                value=prompt, description="prompt", continuous_update=False, layout={"width": "auto"}
            )
            self.target = ipywidgets.Text(
                value=target,
                description="target",
                placeholder="empty: the top-1 token",
                continuous_update=False,
            )
            self.position = ipywidgets.IntText(
                value=position, description="position", continuous_update=False
            )
            self.view = ExplorerView()
            self.update()
            for control in (self.prompt, self.target, self.position):
                control.observe(lambda _change: self.update(), names="value")
            super().__init__([self.prompt, ipywidgets.HBox([self.target, self.position]), self.view])

        def update(self) -> None:
            """Recompute for the controls' values: the view shows the new result, or on a bad input the
            one-line error (``result`` keeps the last good one)."""
            options = dict(self.options, position=self.position.value)
            if self.target.value:
                options["target"] = self.target.value
            try:
                result = attribute(self.loaded, self.prompt.value, **options)
            except TokenlensError as err:
                self.error = str(err)
                self.view.value = error_html(self.error)
                return
            self.result, self.error = result, None
            self.view.value = attribution_html(result)

    return Explorer, ExplorerView


def explore(loaded: Any, prompt: str, target: str | None = None, **attribute_options: Any) -> Any:
    """A live explorer of ``loaded``'s next-token choice in a notebook: an ipywidgets ``VBox`` whose prompt,
    target (empty: the top-1 token) and position (``-1``: the last token) recompute
    :func:`tokenlens.attribute` when changed (on Enter or leaving the box), shown as the report's explorer.

    Args:
        loaded: A model from :func:`tokenlens.load`.
        prompt: The first prompt.
        target: The first target token's text (default: the top-1 token).
        **attribute_options: The other options of :func:`tokenlens.attribute` (``heads=True``,
            ``vs=" London"``, ``sources=["L3"]``, …), kept for every recomputation; ``position`` is the
            position control's first value.

    Returns:
        The widget: ``widget.result`` is the last good
        :class:`~tokenlens.attribution.result.LogitAttribution`, ``widget.error`` the message a bad input
        (empty or over-long prompt, a target that is not one token, a position outside the prompt) shows in
        its view instead of raising; ``widget.prompt``, ``widget.target`` and ``widget.position`` are the
        controls (set their ``value`` to recompute from code).

    Raises:
        TokenlensError: ipywidgets or anywidget missing (``pip install 'tokenlens[notebook]'``), or an
            option that holds for every input (unknown, of the wrong type, ``target_id``: the target here
            is text).
    """
    options = dict(attribute_options)
    position = options.pop("position", -1)
    if "target_id" in options:
        raise TokenlensError("explore takes the target as text (target=' Paris'), not target_id")
    if target is not None and not isinstance(target, str):
        raise TokenlensError(f"target must be a token's text, not {target!r}")
    AttributionRequest.of(None, dict(options, position=position))  # a bad option fails here, not per input
    explorer, _view = _classes()
    return explorer(loaded, prompt, target or "", position, options)
