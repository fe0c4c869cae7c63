"""The one stylesheet of every page the archive holds (step evidence and change reports), inlined into each page
so a page stays one self-contained file, and small (no web fonts, no JavaScript)."""

from __future__ import annotations

from html import escape

CSS = """
:root { --ok: #155724; --ok-bg: #d4edda; --warn: #856404; --warn-bg: #fff3cd; --bad: #721c24; --bad-bg: #f8d7da;
        --line: #d0d7de; --muted: #57606a; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; margin: 0 auto;
       max-width: 1180px; padding: 16px 24px; }
h1 { font-size: 22px; margin: 4px 0 8px; }
h2 { font-size: 17px; margin: 22px 0 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 16px 0 4px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
pre, code { font: 12px/1.35 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; border: 1px solid var(--line); }
.verdict { display: inline-block; padding: 2px 10px; border-radius: 4px; font-weight: 600; }
.pass, .ok { color: var(--ok); background: var(--ok-bg); }
.warn, .would { color: var(--warn); background: var(--warn-bg); }
.fail, .error, .blocked, .interrupted { color: var(--bad); background: var(--bad-bg); }
.muted { color: var(--muted); }
.header { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; margin-bottom: 12px; }
.header table { margin: 4px 0; } .header td, .header th { border: none; padding: 1px 10px 1px 0; }
img { max-width: 100%; }
.banner { border: 1px solid currentColor; border-radius: 6px; padding: 2px 12px; margin: 8px 0; }
.banner p { margin: 6px 0; } .output_text pre { white-space: pre-wrap; }
.traceback summary { cursor: pointer; color: var(--bad); font-weight: 600; }
"""


def page(title: str, body: str) -> str:
    """A whole HTML page: `title` (escaped) as its <title>, `body` (HTML) inside, the stylesheet inlined."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")
