"""The annotation app's pages: jinja2 templates with autoescape on, so every prompt and name is HTML-escaped.

Scripts and styles carry a per-response nonce that the Content-Security-Policy header names; the pages load
nothing from elsewhere.
"""

from __future__ import annotations

from typing import Any

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}{% endblock %}</title>
<style nonce="{{ nonce }}">
body { font-family: system-ui, sans-serif; margin: 1rem 2rem; color: #222; }
#prompt { font-size: 1.2rem; background: #f4f4f4; padding: .6rem .8rem; border-radius: 4px; }
.pair { display: flex; gap: 1rem; justify-content: center; }
.pair figure { margin: 0; text-align: center; }
.pair img { max-width: 44vw; max-height: 62vh; border: 1px solid #ccc; }
.choices { display: flex; gap: 1rem; justify-content: center; margin: 1rem 0; }
button { font-size: 1rem; padding: .5rem 1rem; cursor: pointer; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; }
td, th { border: 1px solid #ccc; padding: .25rem .5rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.flagged { background: #fff3e0; }
.thumb { max-height: 64px; }
.muted { color: #666; }
</style></head>
<body>{% block body %}{% endblock %}</body></html>
"""

_RATER = """{% extends "base" %}
{% block title %}Which image matches the prompt?{% endblock %}
{% block body %}
<p class="muted">Progress: <span id="progress">{{ answered }} / {{ assigned }}</span></p>
{% if item %}
<p>Which image better matches this prompt? Judge how well each image follows it, effects included.</p>
<p id="prompt">{{ prompt }}</p>
<div class="pair">
<figure><img id="first" src="{{ base }}img/{{ first_sha }}" alt="first image"><figcaption>first (1, &larr;)</figcaption></figure>
<figure><img id="second" src="{{ base }}img/{{ second_sha }}" alt="second image"><figcaption>second (2, &rarr;)</figcaption></figure>
</div>
<form method="post" action="{{ base }}answer" class="choices">
<input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="item" value="{{ item }}">
<button type="submit" name="choice" value="first" id="choose-first">First (1 / &larr;)</button>
<button type="submit" name="choice" value="tie" id="choose-tie">Tie (0 / t / &darr;)</button>
<button type="submit" name="choice" value="second" id="choose-second">Second (2 / &rarr;)</button>
</form>
{% else %}
<p id="done">All {{ assigned }} pairs are answered. Thank you! You may close this page.</p>
{% endif %}
<form method="post" action="{{ base }}undo" class="choices">
<input type="hidden" name="csrf" value="{{ csrf }}">{% if item %}<input type="hidden" name="item" value="{{ item }}">{% endif %}
<button type="submit" id="undo">Undo the last answer (u / Backspace)</button>
</form>
<script nonce="{{ nonce }}">
(function () {
  var keys = {"1": "choose-first", "arrowleft": "choose-first", "2": "choose-second", "arrowright": "choose-second",
              "0": "choose-tie", "t": "choose-tie", "arrowdown": "choose-tie", "u": "undo", "backspace": "undo"};
  var sending = false;
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    var button = document.getElementById(keys[e.key.toLowerCase()] || "");
    if (!button) return;
    e.preventDefault();
    button.click();
  });
  // one answer per page: a second key press or click while the first is on its way is dropped
  document.querySelectorAll("form").forEach(function (form) {
    form.addEventListener("submit", function (e) { if (sending) e.preventDefault(); sending = true; });
  });
  window.addEventListener("pageshow", function () { sending = false; });
})();
</script>
{% endblock %}
"""

_ADMIN = """{% extends "base" %}
{% block title %}Annotation: agreement and flags{% endblock %}
{% block body %}
<h1>Agreement of the human raters with each labeller</h1>
<p class="muted">Computed from the run's records at {{ now }}; reload for new answers. Human reference: the raters'
majority per pair (a split vote is a tie). Answers on the ordinal scale original 0, tie 1, anti-aesthetic 2.
Accuracy merges tie and original; n = pairs compared ({{ ci }} % percentile bootstrap intervals over pairs,
{{ n_boot }} resamples).</p>
{% if not labellers %}<p id="no-labeller">no labeller labels in this run</p>{% endif %}
{% if not raters %}<p id="no-human">no human answers yet</p>{% endif %}
<table id="agreement">
<thead><tr><th>labeller</th><th>MAE</th><th>quadratic kappa</th><th>accuracy (tie = original)</th>
<th>accuracy without ties</th><th>n</th></tr></thead>
<tbody>
{% for row in rows %}<tr data-source="{{ row.source }}"><td>{{ row.source }}</td>
{% for cell in row.cells %}<td class="num" data-stat="{{ cell.stat }}" data-value="{{ cell.value }}" data-low="{{ cell.low }}" data-high="{{ cell.high }}" data-n="{{ cell.n }}">{{ cell.text }}</td>
{% endfor %}</tr>
{% endfor %}
</tbody></table>
<p>Inter-rater agreement ({{ raters|length }} raters{% if raters %}: {{ raters|join(", ") }}{% endif %}),
Krippendorff's alpha (ordinal): <span id="alpha" data-value="{{ alpha.value }}" data-low="{{ alpha.low }}" data-high="{{ alpha.high }}" data-n="{{ alpha.n }}">{{ alpha.text }}</span>
(n = {{ alpha.n }} pairs with two or more answers)</p>

<h2>Raters</h2>
<table id="raters"><thead><tr><th>rater</th><th>answered / assigned</th></tr></thead><tbody>
{% for r in progress %}<tr data-rater="{{ r.name }}"><td>{{ r.name }}</td><td class="num">{{ r.answered }} / {{ r.assigned }}</td></tr>
{% endfor %}</tbody></table>

<h2>Pairs</h2>
<p class="muted">Flag a pair as possibly upsetting to take it out of the raters' queues{% if show_flagged %}
(this server shows flagged pairs anyway: --show-flagged){% endif %}. Answers already given stay in the run.</p>
<table id="pairs"><thead><tr><th>pair</th><th>I_o</th><th>I_a</th><th>p_a</th><th>answers</th><th>flag</th></tr></thead>
<tbody>
{% for p in pairs %}<tr data-item="{{ p.item }}" data-flagged="{{ 1 if p.flagged else 0 }}"{% if p.flagged %} class="flagged"{% endif %}>
<td>{{ p.item[:12] }}</td>
<td><img class="thumb" src="{{ base }}img/{{ p.image_o }}" alt="I_o"></td>
<td><img class="thumb" src="{{ base }}img/{{ p.image_a }}" alt="I_a"></td>
<td>{{ p.p_a }}</td><td class="num">{{ p.answers }}</td>
<td><form method="post" action="{{ base }}flag">
<input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="item" value="{{ p.item }}">
<input type="hidden" name="flagged" value="{{ 0 if p.flagged else 1 }}">
<button type="submit">{{ "Unflag" if p.flagged else "Flag as possibly upsetting" }}</button></form></td></tr>
{% endfor %}</tbody></table>
{% endblock %}
"""

_ERROR = """{% extends "base" %}
{% block title %}{{ status }}{% endblock %}
{% block body %}<p id="error">{{ status }}: {{ message }}</p>{% endblock %}
"""

TEMPLATES = {"base": _BASE, "rater": _RATER, "admin": _ADMIN, "error": _ERROR}


def environment(jinja2: Any) -> Any:
    """A jinja2 environment over these templates, HTML-escaping every value."""
    return jinja2.Environment(loader=jinja2.DictLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined)
