"""HTML pieces the report pages share: the page shell, tables, embedded images, the class legend.

Pages are self-contained (images are data URIs, no scripts, no external resources), so the
report works offline and Snakemake can embed each page whole.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
import pandas as pd
from PIL import Image

from pcam.data.voc import DatasetSpec
from pcam.io import IGNORE_INDEX, palette_bytes

CSS = """
body { font-family: system-ui, sans-serif; font-size: 14px; color: #1e293b; margin: 12px; }
h1 { font-size: 20px; margin: 0 0 8px; } h2 { font-size: 16px; margin: 18px 0 6px; }
p.note { color: #475569; max-width: 60em; }
table.data { border-collapse: collapse; }
table.data th, table.data td { padding: 3px 10px; border-bottom: 1px solid #e2e8f0;
  text-align: right; white-space: nowrap; }
table.data thead th { background: #f1f5f9; }
table.gallery { border-collapse: collapse; table-layout: fixed; width: 100%; }
table.gallery th { position: sticky; top: 0; background: #fff; z-index: 1; padding: 4px;
  border-bottom: 1px solid #cbd5e1; }
table.gallery td { padding: 3px; vertical-align: top; }
table.gallery th.id, table.gallery td.id { width: 9em; text-align: left; word-wrap: break-word; }
table.gallery img { width: 100%; height: auto; display: block; }
img.labels { image-rendering: pixelated; }
ul.legend { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 4px 14px; }
ul.legend span.swatch { display: inline-block; width: 14px; height: 14px; margin-right: 4px;
  vertical-align: -2px; border: 1px solid #94a3b8; }
img.figure { max-width: 100%; height: auto; }
"""


def page(title: str, body: str) -> str:
    """A complete, self-contained HTML document."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def data_uri(data: bytes, mime: str) -> str:
    """A base64 data URI of `data`."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def encode_image(array: np.ndarray, fmt: str) -> bytes:
    """HxWx3 uint8 RGB as PNG or JPEG bytes (deterministic: no timestamps in either)."""
    buf = io.BytesIO()
    options = {"quality": 85} if fmt == "JPEG" else {"optimize": False}
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format=fmt, **options)
    return buf.getvalue()


def img_tag(array: np.ndarray, *, labels: bool, alt: str) -> str:
    """An <img> of an RGB array: PNG (exact colours, no smoothing) for label maps, else JPEG."""
    fmt, mime = ("PNG", "image/png") if labels else ("JPEG", "image/jpeg")
    uri = data_uri(encode_image(array, fmt), mime)
    css = ' class="labels"' if labels else ""
    return f'<img{css} src="{uri}" alt="{html.escape(alt)}">'


def file_img_tag(png: bytes, alt: str) -> str:
    """An <img> of a PNG file's bytes (a chart), scaled down to the page width when needed."""
    return f'<img class="figure" src="{data_uri(png, "image/png")}" alt="{html.escape(alt)}">'


def colour_labels(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """HxW class indices -> HxWx3 RGB in the dataset's palette (255: VOC's ignore colour)."""
    lut = np.asarray(palette_bytes(palette), dtype=np.uint8).reshape(256, 3)
    return lut[labels]


def legend(spec: DatasetSpec) -> str:
    """The class legend: a colour swatch and the name of every class, then the ignore label."""
    lut = np.asarray(palette_bytes(spec.palette), dtype=np.uint8).reshape(256, 3)
    entries = [(i, name) for i, name in enumerate(spec.class_names)]
    entries.append((IGNORE_INDEX, "ignore (255)"))
    items = "".join(
        f'<li><span class="swatch" style="background: rgb({r}, {g}, {b})"></span>'
        f"{html.escape(name)}</li>"
        for (i, name) in entries
        for r, g, b in [lut[i]]
    )
    return f'<ul class="legend">{items}</ul>'


def table(frame: pd.DataFrame, text_columns: int = 2) -> str:
    """A data table of a frame of strings, escaped; the first `text_columns` columns left-aligned,
    the numbers right-aligned (inline styles, so it also reads right inside another page)."""

    def cells(tag: str, values) -> str:
        return "".join(
            f'<{tag} style="text-align: {"left" if i < text_columns else "right"}">'
            f"{html.escape(str(v))}</{tag}>"
            for i, v in enumerate(values)
        )

    head = f"<thead><tr>{cells('th', frame.columns)}</tr></thead>"
    rows = "".join(f"<tr>{cells('td', row)}</tr>" for row in frame.itertuples(index=False))
    return f'<table class="data">{head}<tbody>{rows}</tbody></table>'
