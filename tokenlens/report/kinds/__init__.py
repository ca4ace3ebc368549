"""The renderers of each built-in report section kind, one module per result type.

A section kind is a result that a report can show beside the attribution (a logit lens, an ablation, a
patching, estimates, …). Each module here renders its result in every format, as functions named after
the fields of :class:`~tokenlens.report.sections.SectionKind`: ``to_dict`` (JSON form), ``to_table``
(terminal), ``to_html``, ``to_markdown`` and, for a figure of its own, ``to_figure`` (the causal kinds share
:func:`~tokenlens.report.kinds.common.effect_figure`); :data:`tokenlens.report.sections.BUILT_IN` ties each
module into a record. These modules read result objects only: they never run a model, and they import
nothing from the report modules that use them.
"""
