"""Small PNG charts drawn with Pillow (no plotting library): grouped bars and line panels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (127, 127, 127), (188, 189, 34)]
GREY, BLACK, WHITE = (200, 200, 200), (0, 0, 0), (255, 255, 255)


def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _axes(draw, box, lo: float, hi: float, font) -> None:
    """Frame, 5 horizontal grid lines with their values."""
    x0, y0, x1, y1 = box
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        y = y1 - (y1 - y0) * i / 4
        draw.line([(x0, y), (x1, y)], fill=GREY)
        draw.text((x0 - 6, y), _fmt(v), fill=BLACK, font=font, anchor="rm")
    draw.rectangle(box, outline=BLACK)


def _range(values: Sequence[float], zero: bool = True) -> tuple[float, float]:
    lo = min([*values, 0.0] if zero else values)
    hi = max(values)
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi + 0.05 * (hi - lo)


def _legend(draw, names: Sequence[str], x: int, y: int, font) -> None:
    """One row: a colour box and the name per series."""
    for i, name in enumerate(names):
        draw.rectangle([x, y, x + 12, y + 12], fill=COLOURS[i % len(COLOURS)])
        draw.text((x + 18, y + 6), name, fill=BLACK, font=font, anchor="lm")
        x += 40 + int(draw.textlength(name, font=font))


def bar_chart(
    categories: Sequence[str], series: dict[str, Sequence[float | None]], path: str | Path, title: str = "",
    ylabel: str = "",
) -> Path:
    """Grouped vertical bars: one group per category, one bar per series (None: no bar)."""
    font = _font()
    width = max(480, 90 + 60 * len(categories) + 20 * len(categories) * len(series))
    img = Image.new("RGB", (width, 350), WHITE)
    draw = ImageDraw.Draw(img)
    box = (70, 40, width - 20, 290)
    values = [v for vs in series.values() for v in vs if v is not None]
    lo, hi = _range(values or [1.0])
    _axes(draw, box, lo, hi, font)
    draw.text((width // 2, 18), title, fill=BLACK, font=_font(15), anchor="mm")
    if ylabel:
        draw.text((8, 12), ylabel, fill=BLACK, font=font, anchor="lm")
    group_w = (box[2] - box[0]) / max(1, len(categories))
    bar_w = group_w * 0.8 / max(1, len(series))
    for j, vs in enumerate(series.values()):
        for i, v in enumerate(vs):
            if v is None:
                continue
            x = box[0] + group_w * i + group_w * 0.1 + bar_w * j
            y = box[3] - (box[3] - box[1]) * (v - lo) / (hi - lo)
            zero = box[3] - (box[3] - box[1]) * (0 - lo) / (hi - lo)
            draw.rectangle([x, min(y, zero), x + bar_w - 1, max(y, zero)], fill=COLOURS[j % len(COLOURS)])
    for i, name in enumerate(categories):
        x = box[0] + group_w * (i + 0.5)
        draw.text((x, box[3] + 8), str(name)[:12], fill=BLACK, font=font, anchor="mt")
    _legend(draw, list(series), box[0] + 10, box[3] + 40, font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def line_panels(
    x: Sequence[float], panels: Sequence[tuple[str, dict[str, Sequence[float | None]]]], path: str | Path,
    xlabel: str = "",
) -> Path:
    """Side-by-side line charts sharing x: each panel is (title, {series name: values});
    a series with one value drawn as a dashed horizontal line (e.g. a floor)."""
    font = _font()
    pw, ph = 300, 260
    img = Image.new("RGB", (pw * len(panels) + 20, ph + 70), WHITE)
    draw = ImageDraw.Draw(img)
    xs = [float(v) for v in x]
    xlo, xhi = (min(xs), max(xs)) if len(xs) > 1 and max(xs) > min(xs) else (xs[0] - 1, xs[0] + 1)
    names: list[str] = []
    for p, (title, series) in enumerate(panels):
        box = (p * pw + 70, 40, p * pw + pw - 10, ph)
        values = [v for vs in series.values() for v in vs if v is not None]
        lo, hi = _range(values or [1.0], zero=False)
        lo -= 0.05 * (hi - lo)
        _axes(draw, box, lo, hi, font)
        draw.text(((box[0] + box[2]) // 2, 20), title, fill=BLACK, font=_font(15), anchor="mm")

        def px(xv: float, yv: float) -> tuple[float, float]:
            return (box[0] + (box[2] - box[0]) * (xv - xlo) / (xhi - xlo) * 0.9 + (box[2] - box[0]) * 0.05,
                    box[3] - (box[3] - box[1]) * (yv - lo) / (hi - lo))

        for name, vs in series.items():
            if name not in names:
                names.append(name)
            colour = COLOURS[names.index(name) % len(COLOURS)]
            if len(vs) == 1 and vs[0] is not None:  # a constant reference line, dashed
                y = px(xlo, vs[0])[1]
                for s in range(int(box[0]), int(box[2]), 10):
                    draw.line([(s, y), (min(s + 5, box[2]), y)], fill=colour, width=2)
                continue
            pts = [px(xv, yv) for xv, yv in zip(xs, vs) if yv is not None]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            for a, b in pts:
                draw.ellipse([a - 3, b - 3, a + 3, b + 3], fill=colour)
        for xv in xs:
            draw.text((px(xv, lo)[0], box[3] + 6), _fmt(xv), fill=BLACK, font=font, anchor="mt")
        draw.text(((box[0] + box[2]) // 2, box[3] + 24), xlabel, fill=BLACK, font=font, anchor="mt")
    _legend(draw, names, 80, ph + 44, font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def xy_panels(
    panels: Sequence[tuple[str, dict[str, tuple[Sequence[float], Sequence[float]]]]], path: str | Path,
    xlabel: str = "", log_y: Sequence[bool] | None = None, note: str = "",
) -> Path:
    """Side-by-side line charts, each series with its own x: panels are (title,
    {series name: (xs, ys)}); a series with one point and x None is a dashed horizontal
    line (e.g. a floor). `log_y[p]`: log10 scale for panel p (ticks show the values).
    A panel with no data says so."""
    import math

    font = _font()
    pw, ph = 340, 280
    img = Image.new("RGB", (pw * len(panels) + 20, ph + 70 + (18 if note else 0)), WHITE)
    draw = ImageDraw.Draw(img)
    names: list[str] = []
    for p, (title, series) in enumerate(panels):
        box = (p * pw + 70, 40, p * pw + pw - 10, ph)
        logy = bool(log_y and log_y[p])
        ty = (lambda v: math.log10(v)) if logy else (lambda v: v)
        pts_all = [(x, ty(y)) for xs, ys in series.values() for x, y in zip(xs, ys)
                   if y is not None and (not logy or y > 0)]
        draw.text(((box[0] + box[2]) // 2, 20), title, fill=BLACK, font=_font(15), anchor="mm")
        if not pts_all:
            draw.rectangle(box, outline=BLACK)
            draw.text(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2), "no data", fill=BLACK, font=font, anchor="mm")
            continue
        xs_all = [x for x, _ in pts_all if x is not None]
        xlo, xhi = (min(xs_all), max(xs_all)) if xs_all else (0.0, 1.0)
        if xhi <= xlo:
            xlo, xhi = xlo - 1, xhi + 1
        lo, hi = _range([y for _, y in pts_all], zero=False)
        lo -= 0.05 * (hi - lo)
        for i in range(5):  # grid lines, labelled in data units
            v = lo + (hi - lo) * i / 4
            y = box[3] - (box[3] - box[1]) * i / 4
            draw.line([(box[0], y), (box[2], y)], fill=GREY)
            draw.text((box[0] - 6, y), _fmt(10**v if logy else v), fill=BLACK, font=font, anchor="rm")
        draw.rectangle(box, outline=BLACK)

        def px(xv: float, yv: float) -> tuple[float, float]:
            return (box[0] + (box[2] - box[0]) * ((xv - xlo) / (xhi - xlo) * 0.9 + 0.05),
                    box[3] - (box[3] - box[1]) * (yv - lo) / (hi - lo))

        for name, (xs, ys) in series.items():
            if name not in names:
                names.append(name)
            colour = COLOURS[names.index(name) % len(COLOURS)]
            pts = [px(x, ty(y)) for x, y in zip(xs, ys) if y is not None and x is not None and (not logy or y > 0)]
            if len(xs) == 1 and xs[0] is None and ys[0] is not None:  # a constant reference line, dashed
                y = px(xlo, ty(ys[0]))[1]
                for s in range(int(box[0]), int(box[2]), 10):
                    draw.line([(s, y), (min(s + 5, box[2]), y)], fill=colour, width=2)
                continue
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            if len(pts) <= 60:
                for a, b in pts:
                    draw.ellipse([a - 3, b - 3, a + 3, b + 3], fill=colour)
        for i in range(3):
            xv = xlo + (xhi - xlo) * i / 2
            draw.text((px(xv, lo)[0], box[3] + 6), f"{xv:.4g}", fill=BLACK, font=font, anchor="mt")
        draw.text(((box[0] + box[2]) // 2, box[3] + 24), xlabel, fill=BLACK, font=font, anchor="mt")
    _legend(draw, names, 80, ph + 44, font)
    if note:
        draw.text((80, ph + 66), note, fill=BLACK, font=font, anchor="lt")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
