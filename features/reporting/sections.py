"""Pages as sections (text, tables, figures), rendered to one self-contained HTML page and a Markdown twin.

The HTML carries its figures as inline SVG and its style inline: no script, font or CDN, so it
opens offline from disk. The Markdown twin has the same text and tables (figures are HTML-only).
The report (features/reporting/page.py) and the validation pages are built this way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jinja2
import pandas as pd


@dataclass
class Section:
    id: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (caption, table)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (caption, svg)


HTML = jinja2.Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 12px; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } figure { margin: 1em 0; overflow-x: auto; } figcaption { font-size: 12px; color: #555; }
nav a { margin-right: 1em; } h3 { font-size: 14px; }
</style></head><body>
<h1>{{ title }}</h1>
<nav>{% for s in sections %}<a href="#{{ s.id }}">{{ s.title }}</a>{% endfor %}</nav>
{% for s in sections %}<section id="{{ s.id }}"><h2>{{ s.title }}</h2>
{% for p in s.paragraphs %}<p>{{ p }}</p>
{% endfor %}{% for caption, svg in s.figures %}<figure>{{ svg | safe }}<figcaption>{{ caption }}</figcaption></figure>
{% endfor %}{% for caption, table in s.tables %}<h3>{{ caption }}</h3>
{% if table.empty %}<p class="empty">{{ empty }}</p>
{% else %}{{ table.to_html(index=False, border=0) | safe }}{% endif %}
{% endfor %}</section>
{% endfor %}</body></html>
""", autoescape=True)

MARKDOWN = jinja2.Template("""# {{ title }}

Figures are in index.html (inline SVG); this twin has the same text and tables.
{% for s in sections %}
## {{ s.title }}
{% for p in s.paragraphs %}
{{ p }}
{% endfor %}{% for caption, svg in s.figures %}
*Figure: {{ caption }}*
{% endfor %}{% for caption, table in s.tables %}
**{{ caption }}**

{% if table.empty %}*{{ empty }}*{% else %}{{ table.to_markdown(index=False) }}{% endif %}
{% endfor %}{% endfor %}""")


# An empty table says so, in words: a page of empty grids reads as a broken page, not as a run without results.
EMPTY = "Nothing in this run for this table: the stages that fill it produced no rows (see their logs)."


def render(sections: list[Section], title: str) -> tuple[str, str]:
    """The HTML page and its Markdown twin."""
    return (HTML.render(title=title, sections=sections, empty=EMPTY),
            MARKDOWN.render(title=title, sections=sections, empty=EMPTY))
