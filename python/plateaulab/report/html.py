"""A self-contained HTML document: inline CSS, figures as base64 PNG, no external requests."""

from __future__ import annotations

import base64
import html
import math

import numpy as np
import pandas as pd

CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif; margin: 24px auto;
       max-width: 1320px; color: #222; line-height: 1.45; padding: 0 16px; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 2em; }
.meta { color: #555; font-size: 0.92em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.9em; margin-top: 4px; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; }
td.text, th.text { text-align: left; }
td.nowrap { white-space: nowrap; }
td.flags { min-width: 14em; }
tr.flagged td { background: #fff6e0; }
ul.summary li { margin-bottom: 3px; }
.warn { color: #8a4b00; }
.note { background: #f6f8fa; border-left: 3px solid #9ab; padding: 6px 10px; margin: 8px 0; }
.tablewrap { overflow-x: auto; }
.toc { font-size: 0.92em; background: #f6f8fa; padding: 6px 10px; }
.toc a { color: #1f4e8c; text-decoration: none; }
"""


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return ""
        if f != 0 and (abs(f) >= 1e4 or abs(f) < 1e-3):
            return f"{f:.{digits - 1}e}"
        return f"{f:.{digits}f}"
    return str(v)


def table(df: pd.DataFrame, *, text_cols=(), flag_col: str | None = None, digits: int = 3,
          nowrap_cols=()) -> str:
    """An HTML table; numbers right-aligned and rounded, text columns left-aligned, flagged rows tinted."""
    cols = list(df.columns)
    text_cols = set(text_cols) | {c for c in cols if not pd.api.types.is_numeric_dtype(df[c])
                                  and not pd.api.types.is_bool_dtype(df[c])}
    # numeric columns holding only whole numbers (counts, shots) print without decimals
    whole = {c for c in cols if pd.api.types.is_float_dtype(df[c]) and df[c].notna().any()
             and np.all(np.mod(df[c].dropna().to_numpy(float), 1.0) == 0) and df[c].abs().max() < 1e9}
    out = ['<div class="tablewrap"><table><thead><tr>']
    for c in cols:
        cls = ' class="text"' if c in text_cols else ""
        out.append(f"<th{cls}>{esc(c)}</th>")
    out.append("</tr></thead><tbody>")
    for _, row in df.iterrows():
        flagged = flag_col is not None and bool(row.get(flag_col))
        out.append('<tr class="flagged">' if flagged else "<tr>")
        for c in cols:
            classes = (["text"] if c in text_cols else []) + (["nowrap"] if c in nowrap_cols else [])
            if c == flag_col:
                classes.append("flags")
            cls = f' class="{" ".join(classes)}"' if classes else ""
            value = row[c]
            if c in whole and value is not None and np.isfinite(value):
                value = int(value)
            out.append(f"<td{cls}>{esc(fmt(value, digits))}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def figure(png: bytes, caption: str, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>")


def document(title: str, body: list[str]) -> str:
    """The page, with an anchor on every section heading and a contents line after the first paragraph
    block (the report is long: a dozen figures)."""
    import re

    sections, parts = [], []
    for part in body:
        def anchor(m):
            sid = f"s{len(sections) + 1}"
            sections.append((sid, re.sub(r"<[^>]+>", "", m.group(1))))
            return f'<h2 id="{sid}">{m.group(1)}</h2>'
        parts.append(re.sub(r"<h2>(.*?)</h2>", anchor, part))
    if len(sections) > 2:
        toc = ('<p class="toc">Contents: '
               + " &middot; ".join(f'<a href="#{sid}">{text}</a>' for sid, text in sections) + "</p>")
        first = next((i for i, p in enumerate(parts) if '<h2 id="s1">' in p), len(parts))
        parts.insert(first, toc)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
