"""The rendering kit: the small helpers every tokenlens report is built from, in every format.

A report shows untrusted text (tokens and prompts from a tokenizer, file names, chat messages) next to
numbers that must read the same everywhere. The kit owns both rules, so each renderer (the attribution and
diff reports, the sweep map) writes a section's content and nothing else:

* :mod:`~tokenlens.report.kit.text`: plain text, shared by every format: token literals, visible escapes,
  probability formatting, JSON-safe numbers, the names of explained quantities.
* :mod:`~tokenlens.report.kit.html`: one self-contained HTML page: its style sheet and
  Content-Security-Policy, escaped text, number cells carrying their exact value, tables, token boxes,
  bars, figures, sections.
* :mod:`~tokenlens.report.kit.markdown`: GitHub-flavoured Markdown: code spans nothing can break, escaped
  text, tables, image links.
* :mod:`~tokenlens.report.kit.terminal`: rich renderables: signed numbers, tables, captions, plain-text
  export.

The kit imports nothing else from :mod:`tokenlens.report` and knows no result type: it renders strings and
numbers, never a model's output.
"""
