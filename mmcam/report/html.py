"""The report page: plain HTML with inline CSS, no scripts and no external resources; images are the
PNG files next to it (relative links). Every text from a run directory is escaped."""

from __future__ import annotations

import csv
import html
from collections.abc import Iterable, Sequence
from typing import Any

from mmcam.report.run_outputs import finite

__all__ = [
    "escape",
    "table",
    "figure",
    "section",
    "page",
    "format_value",
    "flatten_summary",
    "csv_table",
    "definition_list",
]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top;font-size:.9em}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.3em;text-align:center}figcaption{font-size:.8em;color:#555}
img.panel{image-rendering:pixelated}p.note{color:#555;font-size:.9em}code{background:#f5f5f5;padding:0 .2em}
dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em}dt{font-weight:600}dd{margin:0}
"""


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def format_value(value: Any) -> str:
    """Numbers with 4 significant digits, ``{"mean", "std"}`` as ``mean ± std`` (3 decimals), the rest as
    text."""
    if isinstance(value, dict) and "mean" in value and "std" in value:
        mean, std = value["mean"], value["std"]
        if not (finite(mean) and (std is None or finite(std))):
            return f"{mean} ± {std}"
        return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"
    if isinstance(value, float):
        return f"{value:.4g}" if finite(value) else str(value)
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric_from: int = 1) -> str:
    """An HTML table; cells are escaped; columns from ``numeric_from`` on are right-aligned."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f"<td{' class=num' if i >= numeric_from else ''}>{escape(format_value(v))}</td>" for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def definition_list(items: Iterable[tuple[str, Any]]) -> str:
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(format_value(v))}</dd>" for k, v in items) + "</dl>"


def figure(src: str, caption: str, *, width: int | None = None, height: int | None = None, css_class: str = "") -> str:
    """An image (relative ``src``) with its caption; ``width``/``height``: the PNG's pixel size."""
    size = (f' width="{width}"' if width else "") + (f' height="{height}"' if height else "")
    cls = f' class="{escape(css_class)}"' if css_class else ""
    return (
        f'<figure><img src="{escape(src)}" alt="{escape(caption)}"{size}{cls}>'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def section(title: str, body: str, *, level: int = 2, anchor: str | None = None) -> str:
    ident = f' id="{escape(anchor)}"' if anchor else ""
    return f"<section{ident}><h{level}>{escape(title)}</h{level}>{body}</section>"


def paragraph(text: str, css_class: str = "") -> str:
    cls = f' class="{escape(css_class)}"' if css_class else ""
    return f"<p{cls}>{escape(text)}</p>"


def link(href: str, text: str) -> str:
    return f'<a href="{escape(href)}">{escape(text)}</a>'


def page(title: str, body: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>{''.join(body)}</body></html>\n"
    )


def flatten_summary(
    summary: Any, prefix: str = "", limit: int = 400
) -> tuple[list[tuple[str, Any]], list[tuple[str, str]]]:
    """An evaluation summary of unknown shape as ``(rows, texts)``: ``rows`` = ``(key path, value)`` for
    numbers, ``{"mean", "std"}`` pairs and short scalars; ``texts`` = ``(key path, text)`` for strings
    longer than 60 characters (protocol statements). At most ``limit`` rows."""
    rows: list[tuple[str, Any]] = []
    texts: list[tuple[str, str]] = []

    def walk(value: Any, path: str) -> None:
        if len(rows) >= limit:
            return
        if isinstance(value, dict):
            if "mean" in value and "std" in value and not isinstance(value["mean"], (dict, list)):
                rows.append((path, {"mean": value["mean"], "std": value["std"]}))
                rest = {k: v for k, v in value.items() if k not in ("mean", "std")}
            else:
                rest = value
            for key, item in rest.items():
                walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list):
            if all(not isinstance(v, (dict, list)) for v in value) and len(value) <= 8:
                rows.append((path, ", ".join(format_value(v) for v in value)))
            else:
                for i, item in enumerate(value):
                    walk(item, f"{path}[{i}]")
        elif isinstance(value, str) and len(value) > 60:
            texts.append((path, value))
        else:
            rows.append((path, value))

    walk(summary, prefix)
    return rows[:limit], texts


def csv_table(path, limit: int = 100) -> tuple[str, int]:
    """The first ``limit`` rows of a CSV file as an HTML table, and the file's number of data rows."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        rows = list(reader)
    return table(header, rows[:limit], numeric_from=1), len(rows)


#: Columns of the per-channel table of an ``mmcam-evaluation`` summary: (key, heading).
EVALUATION_METRICS = (
    ("dice", "Dice 3-D"),
    ("hd95_mm", "HD95 mm"),
    ("assd_mm", "ASSD mm"),
    ("dice_2d", "Dice 2-D"),
    ("ap", "AP (threshold-free)"),
)


def _statistic(stats: Any) -> str:
    if not isinstance(stats, dict) or "mean" not in stats:
        return format_value(stats) if stats is not None else ""
    if stats.get("mean") is None:
        text = "n/a"
    else:
        text = format_value({"mean": stats["mean"], "std": stats.get("std")})
    if stats.get("n_undefined"):
        text += f" (n={stats.get('n')}, {stats['n_undefined']} undefined)"
    return text


def evaluation_summary(summary: dict, known_format: bool) -> str:
    """An evaluation summary: for the ``mmcam-evaluation`` format, its warning, protocol and the table of
    map type × channel; for any other JSON, its protocol texts and a flat key/value table."""
    if not known_format:
        rows, texts = flatten_summary(summary)
        return "".join(paragraph(f"{path}: {text}", "note") for path, text in texts) + table(["key", "value"], rows)
    parts = []
    if summary.get("warning"):
        parts.append(f"<p><strong>{escape(summary['warning'])}</strong></p>")
    protocol = summary.get("protocol", {})
    items = []
    for key, value in protocol.items():
        if key == "subjects" and isinstance(value, list):
            value = f"{len(value)} patients"
        elif isinstance(value, dict):
            value = "; ".join(f"{k}: {format_value(v)}" for k, v in value.items())
        items.append((key, value))
    parts.append(definition_list(items))
    metric_rows = []
    for map_type, result in summary.get("maps", {}).items():
        for channel, stats in (result.get("channels", {}) if isinstance(result, dict) else {}).items():
            metric_rows.append(
                [
                    map_type,
                    channel,
                    stats.get("threshold", ""),
                    *[_statistic(stats.get(key)) for key, _ in EVALUATION_METRICS],
                ]
            )
    parts.append(
        table(["map", "channel", "threshold", *[h for _, h in EVALUATION_METRICS]], metric_rows, numeric_from=2)
    )
    return "".join(parts)
