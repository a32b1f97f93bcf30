"""Figures drawn with numpy and Pillow alone, so the runtime needs no plotting library: a
cross-validation of Table 2's decoders (crossval.py) and FROC curves (evaluate.py --froc).

    draw_crossval("crossval.png", runs, curves, title="CBIS-DDSM masses, 5-fold cross-validation")
"""
from __future__ import annotations

import io
import math

import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageFont

from readers.atomic import atomic_write

METRIC_LABELS = {"dice_mean_per_image": "Dice, mean over images (%)",
                 "iou_mean_per_image": "IoU, mean over images (%)",
                 "dice_mean_lesion_images": "Dice, mean over lesion images (%)",
                 "iou_mean_lesion_images": "IoU, mean over lesion images (%)",
                 "dice_pooled": "Dice, pooled over pixels (%)",
                 "iou_pooled": "IoU, pooled over pixels (%)",
                 "mean_iou": "mIoU (%)"}
# Okabe & Ito's colour-blind-safe palette without its black (the ink) and yellow (pale on white)
PALETTE = [(230, 159, 0), (0, 114, 178), (0, 158, 115), (213, 94, 0), (86, 180, 233),
           (204, 121, 167)]
INK, MUTED, GRID, PAIR_LINE = (34, 34, 34), (100, 100, 100), (230, 230, 230), (185, 185, 185)
WIDTH, HEIGHT, MARGIN, GAP = 1400, 640, 28, 10  # pixels; the same size whatever the figure shows
LEFT_PANEL_WIDTH = 580  # the rest is the learning curves, which need room for 150 epochs
TITLE_SIZE, HEADING_SIZE, TEXT_SIZE, SMALL_SIZE = 26, 19, 16, 14  # font sizes in pixels
# Pillow >= 10.1 scales its built-in font; older ones have one small bitmap font, and every
# layout below measures text
SCALABLE_FONT = tuple(int(part) for part in PIL.__version__.split(".")[:2]) >= (10, 1)


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size) if SCALABLE_FONT else ImageFont.load_default()


def line_height(draw: ImageDraw.ImageDraw, face) -> int:
    """The height of a line of any text, so that rows line up whatever letters they hold."""
    return draw.textbbox((0, 0), "0Ag%", font=face)[3] - draw.textbbox((0, 0), "0Ag%", font=face)[1]


def put_text(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, face, *, anchor: str = "lt",
             fill: tuple = INK) -> None:
    """Text placed by `anchor` (l/m/r then t/m/b), measured here: bitmap fonts take no anchor."""
    left, _, right, _ = draw.textbbox((0, 0), text, font=face)
    top, height = draw.textbbox((0, 0), "0Ag%", font=face)[1], line_height(draw, face)
    dx = {"l": 0, "m": (right - left) / 2, "r": right - left}[anchor[0]]
    dy = {"t": 0, "m": height / 2, "b": height}[anchor[1]]
    draw.text((round(x - dx - left), round(y - dy - top)), text, font=face, fill=fill)


def put_vertical_text(image: Image.Image, x: float, y: float, text: str, face,
                      fill: tuple = INK) -> None:
    """Text read from bottom to top, centred on (x, y): a y-axis label."""
    left, top, right, bottom = ImageDraw.Draw(image).textbbox((0, 0), text, font=face)
    stencil = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(stencil).text((-left, -top), text, font=face, fill=255)
    stencil = stencil.rotate(90, expand=True)
    image.paste(fill, (round(x - stencil.width / 2), round(y - stencil.height / 2)), stencil)


def fit(draw: ImageDraw.ImageDraw, texts: list[str], max_width: float, size: int,
        smallest: int = 11) -> tuple:
    """The largest font, down to `smallest`, in which all texts fit max_width, and the texts,
    any still too wide cut short with an ellipsis: neighbouring labels never overlap."""
    for candidate in range(size, smallest - 1, -1):
        face = font(candidate)
        if all(draw.textlength(text, font=face) <= max_width for text in texts):
            return face, texts
    shortened = []
    for text in texts:
        while len(text) > 1 and draw.textlength(text, font=face) > max_width:
            text = text[:-2] + "\u2026"
        shortened.append(text)
    return face, shortened


def nice_ticks(low: float, high: float, *, count: int = 6, integer: bool = False) -> list[float]:
    """About `count` round values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    if not high > low:  # a single value: show a little around it
        low, high = low - 1, high + 1
    raw_step = (high - low) / count
    power = 10 ** math.floor(math.log10(raw_step))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw_step)
    step = max(step, 1) if integer else step
    return [round(i * step, 9) for i in range(math.floor(low / step), math.ceil(high / step) + 1)]


def percent_ticks(values: list[float]) -> list[float]:
    """Ticks for scores in %: around the values, within 0-100, covering at least 2 points."""
    low, high = (min(values), max(values)) if values else (0.0, 100.0)
    widen = max(2 - (high - low), 0) / 2  # equal scores: a tiny range would tick 60.002
    low, high = max(low - widen, 0), min(high + widen, 100)
    return nice_ticks(min(low, 98), max(high, 2))


def as_percent(value) -> float:
    """A score in [0, 1] as a percentage; None (a failed fold) becomes NaN, which nothing draws."""
    return math.nan if value is None else 100.0 * float(value)


class Axes:
    """A plot area, box = (left, top, right, bottom) in pixels, showing x_range and y_range."""

    def __init__(self, box: tuple, x_range: tuple, y_range: tuple):
        self.box, self.x_range, self.y_range = box, x_range, y_range

    def px(self, x: float, y: float) -> tuple[float, float]:
        """Data -> pixels; y grows upwards and stops at the frame (a whisker may pass 100%)."""
        left, top, right, bottom = self.box
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        y = min(max(y, y0), y1)
        return (left + (x - x0) / (x1 - x0) * (right - left),
                bottom - (y - y0) / (y1 - y0) * (bottom - top))

    def draw_x_axis(self, image: Image.Image, ticks: list[float], label: str, face) -> None:
        """Tick marks and numbers under the plot, and the label under them."""
        draw = ImageDraw.Draw(image)
        bottom = self.box[3]
        for tick in ticks:
            x, _ = self.px(tick, self.y_range[0])
            draw.line([(x, bottom), (x, bottom + 4)], fill=INK, width=1)
            put_text(draw, x, bottom + GAP, f"{tick:g}", face, anchor="mt")
        below_numbers = bottom + 2 * GAP + line_height(draw, face)
        put_text(draw, (self.box[0] + self.box[2]) / 2, below_numbers, label, face, anchor="mt")

    def draw_y_axis(self, image: Image.Image, ticks: list[float], label: str, face) -> None:
        """Gridlines and numbers at `ticks`, the axis lines, and the label upright left of them."""
        draw = ImageDraw.Draw(image)
        left, top, right, bottom = self.box
        for tick in ticks:
            _, y = self.px(self.x_range[0], tick)
            draw.line([(left, y), (right, y)], fill=GRID, width=1)
            put_text(draw, left - GAP, y, f"{tick:g}", face, anchor="rm")
        draw.line([(left, top), (left, bottom), (right, bottom)], fill=INK, width=1)
        numbers_width = max(draw.textlength(f"{tick:g}", font=face) for tick in ticks)
        put_vertical_text(image, left - 2 * GAP - numbers_width - line_height(draw, face) / 2,
                          (top + bottom) / 2, label, face)


def check_inputs(runs: dict, curves: dict, metric: str) -> None:
    """ValueError naming the first inconsistency, which would pair the wrong runs silently."""
    if metric not in METRIC_LABELS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRIC_LABELS)}")
    if not 1 <= len(runs) <= len(PALETTE):
        raise ValueError(f"runs holds {len(runs)} decoders; the figure draws 1 to {len(PALETTE)}")
    if set(runs) != set(curves):
        raise ValueError(f"runs and curves name different decoders: only in runs "
                         f"{sorted(set(runs) - set(curves))}, only in curves "
                         f"{sorted(set(curves) - set(runs))}")
    for name, folds in runs.items():
        if not folds or len(curves[name]) != len(folds):
            raise ValueError(f"decoder {name!r}: {len(folds)} folds in runs but "
                             f"{len(curves[name])} in curves; curves holds one list of epoch "
                             "records per fold, in the order of runs")
        for run in folds:
            if "fold" not in run or metric not in run:
                raise ValueError(f"decoder {name!r}: a fold's record lacks 'fold' or {metric!r}: "
                                 f"{sorted(run)}")
        numbers = [run["fold"] for run in folds]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"decoder {name!r}: fold numbers repeat: {numbers}")


def draw_folds(image: Image.Image, box: tuple, runs: dict, metric: str) -> None:
    """A column per decoder, a dot per fold, grey lines joining a fold, mean +- SD beside."""
    draw = ImageDraw.Draw(image)
    names = list(runs)
    scores = {name: {run["fold"]: as_percent(run[metric]) for run in runs[name]} for name in names}
    folds = sorted({fold for by_fold in scores.values() for fold in by_fold})
    finite = {name: np.array([s for s in scores[name].values() if math.isfinite(s)])
              for name in names}
    summaries = {name: (f.mean() if f.size else math.nan,
                        f.std(ddof=1) if f.size > 1 else math.nan, f.size)
                 for name, f in finite.items()}  # mean, sample SD, folds scored
    ticks = percent_ticks([s for f in finite.values() for s in f] +  # the dots and whiskers' ends
                          [m + k * sd for m, sd, _ in summaries.values() if math.isfinite(sd)
                           for k in (-1, 1)])
    # the rows under the columns: name, mean +- SD and, when a fold failed, the folds scored
    column = (box[2] - box[0]) / len(names) - GAP
    name_face, labels = fit(draw, names, column, TEXT_SIZE)
    stats = [f"{m:.1f} \u00b1 {sd:.1f} %" if math.isfinite(sd)
             else f"{m:.1f} %" if math.isfinite(m) else "failed"
             for m, sd, _ in summaries.values()]  # a single fold scored has no SD
    stats_face, stats = fit(draw, stats, column, TEXT_SIZE)
    note_face, notes = fit(draw, [f"{scored} of {len(runs[name])} folds"
                                  for name, (_, _, scored) in summaries.items()],
                           column, SMALL_SIZE)
    axes = Axes(box, (-0.5, len(names) - 0.5), (ticks[0], ticks[-1]))
    axes.draw_y_axis(image, ticks, METRIC_LABELS[metric], font(TEXT_SIZE))

    spacing = min(3.0, 18 / max(len(folds) - 1, 1))  # dots slightly apart: equal scores show

    def dot_x(index: int, fold: int) -> float:  # dots left of the centre, mean and SD right
        return axes.px(index, 0)[0] - 16 + spacing * (folds.index(fold) - (len(folds) - 1) / 2)
    for fold in folds:  # the pairing lines first, so that the dots cover their ends
        for index in range(len(names) - 1):
            here, there = (scores[names[index]].get(fold, math.nan),
                           scores[names[index + 1]].get(fold, math.nan))
            if math.isfinite(here) and math.isfinite(there):
                draw.line([(dot_x(index, fold), axes.px(0, here)[1]),
                           (dot_x(index + 1, fold), axes.px(0, there)[1])],
                          fill=PAIR_LINE, width=1)
    rows_top, row = box[3] + GAP, line_height(draw, name_face) + GAP
    for index, name in enumerate(names):
        colour, (mean, sd, scored), centre = PALETTE[index], summaries[name], axes.px(index, 0)[0]
        for fold, score in scores[name].items():
            if math.isfinite(score):
                x, y = dot_x(index, fold), axes.px(0, score)[1]
                draw.ellipse([x - 6, y - 6, x + 6, y + 6], fill=colour, outline="white")
        summary_x = centre + 18
        if math.isfinite(sd):  # NaN when fewer than two folds were scored
            draw.line([(summary_x, axes.px(0, mean - sd)[1]),
                       (summary_x, axes.px(0, mean + sd)[1])], colour, 2)
        if math.isfinite(mean):
            draw.line([(summary_x - 13, axes.px(0, mean)[1]),
                       (summary_x + 13, axes.px(0, mean)[1])], colour, 5)
        put_text(draw, centre, rows_top, labels[index], name_face, anchor="mt")
        put_text(draw, centre, rows_top + row, stats[index], stats_face, anchor="mt")
        if scored < len(runs[name]):
            put_text(draw, centre, rows_top + 2 * row, notes[index], note_face, anchor="mt",
                     fill=MUTED)


def draw_curves(image: Image.Image, box: tuple, curves: dict, metric: str) -> None:
    """Validation score per epoch, a line per fold in its decoder's colour; NaN breaks the line."""
    draw = ImageDraw.Draw(image)
    lines = [(colour, [(r["epoch"], as_percent(r[f"val_{metric}"])) for r in records
                       if f"val_{metric}" in r])  # an epoch not validated (--val-every) is left out
             for colour, folds in zip(PALETTE, curves.values())
             for records in folds]  # (colour, epochs) per fold
    points = [(e, s) for _, line in lines for e, s in line if math.isfinite(s)]
    epochs, values = [e for e, _ in points], [s for _, s in points]
    x_ticks = nice_ticks(min(epochs, default=0), max(epochs, default=1), integer=True)
    y_ticks = percent_ticks(values)
    axes = Axes(box, (x_ticks[0], x_ticks[-1]), (y_ticks[0], y_ticks[-1]))
    face = font(TEXT_SIZE)
    axes.draw_y_axis(image, y_ticks, "validation " + METRIC_LABELS[metric], face)
    axes.draw_x_axis(image, x_ticks, "epoch", face)
    if not points:
        put_text(draw, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, "no epochs logged", face,
                 anchor="mm", fill=MUTED)
    for colour, line in lines:
        segment = []  # consecutive finite epochs; a NaN ends the segment rather than diving to 0
        for epoch, score in line + [(0, math.nan)]:
            if math.isfinite(score):
                segment.append(axes.px(epoch, score))
                continue
            if len(segment) > 1:
                draw.line(segment, fill=colour, width=2, joint="curve")
            elif segment:  # a lone epoch, which a line would not show
                x, y = segment[0]
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
            segment = []


def draw_legend(draw: ImageDraw.ImageDraw, left: float, top: float, names: list[str],
                max_width: float) -> float:
    """A line of colour swatches and names, wrapped to max_width; returns the y below it."""
    face, swatch = font(TEXT_SIZE), 24
    height = line_height(draw, face)
    x, y = left, top
    for colour, name in zip(PALETTE, names):
        width = swatch + 6 + draw.textlength(name, font=face)
        if x > left and x + width > left + max_width:
            x, y = left, y + height + GAP
        draw.line([(x, y + height / 2), (x + swatch, y + height / 2)], fill=colour, width=4)
        put_text(draw, x + swatch + 6, y, name, face)
        x += width + 3 * GAP
    return y + height


def draw_crossval(path, runs: dict, curves: dict, *, title: str,
                  metric: str = "dice_mean_per_image") -> None:
    """A cross-validation's figure to the PNG `path`: left, the score of each fold and mean +- SD;
    right, the learning curves. runs: decoder -> per fold, {"fold", metric (None if failed)};
    curves: decoder -> per fold, in the same order, its log.jsonl's epoch records."""
    check_inputs(runs, curves, metric)
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    title_face, (title,) = fit(draw, [title], WIDTH - 2 * MARGIN, TITLE_SIZE)
    put_text(draw, WIDTH / 2, MARGIN, title, title_face, anchor="mt")
    headings_top = MARGIN + line_height(draw, title_face) + 2 * GAP
    heading, small, text = font(HEADING_SIZE), font(SMALL_SIZE), font(TEXT_SIZE)
    # room left of each plot for the upright axis label and the tick numbers ("100" the widest)
    axis_room = line_height(draw, text) + 3 * GAP + draw.textlength("100", font=text)
    left_box_x = (MARGIN + axis_room, LEFT_PANEL_WIDTH - MARGIN)
    right_box_x = (LEFT_PANEL_WIDTH + MARGIN + axis_room, WIDTH - MARGIN)
    most_folds = max(len(folds) for folds in runs.values())
    put_text(draw, left_box_x[0], headings_top,
             f"Per fold ({most_folds} fold{'s' * (most_folds > 1)})", heading)
    put_text(draw, right_box_x[0], headings_top, "Learning curves", heading)
    below_heading = headings_top + line_height(draw, heading) + GAP
    put_text(draw, left_box_x[0], below_heading, "dot: a fold; grey line: the same fold; bar and "
             "whisker: mean \u00b1 1 SD", small, fill=MUTED)
    legend_bottom = draw_legend(draw, right_box_x[0], below_heading, list(runs),
                                right_box_x[1] - right_box_x[0])
    top = max(below_heading + line_height(draw, small), legend_bottom) + 2 * GAP
    # under the plots: names and mean +- SD (or ticks and "epoch"), and a row for "4 of 5 folds"
    failed = any(not math.isfinite(as_percent(run[metric]))
                 for folds in runs.values() for run in folds)
    bottom = HEIGHT - MARGIN - (3 if failed else 2) * (line_height(draw, text) + GAP) - GAP
    draw_folds(image, (left_box_x[0], top, left_box_x[1], bottom), runs, metric)
    draw_curves(image, (right_box_x[0], top, right_box_x[1], bottom), curves, metric)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())


FROC_WIDTH, FROC_HEIGHT = 900, 640  # pixels
FROC_MAX_RATE = 8.0  # false positives per image: the x axis ends here at the latest


def clipped_segments(points: list[tuple[float, float]], x_max: float) -> list[list[tuple]]:
    """The polyline through `points` cut at x = x_max: its pieces left of it (NaN breaks it)."""
    pieces, piece = [], []
    for (x0, y0), (x1, y1) in zip(points, points[1:] + [(math.nan, math.nan)]):
        finite0, finite1 = math.isfinite(x0 + y0), math.isfinite(x1 + y1)
        inside0, inside1 = finite0 and x0 <= x_max, finite1 and x1 <= x_max
        if inside0:
            piece.append((x0, y0))
        if finite0 and finite1 and inside0 != inside1:  # crosses the edge
            piece.append((x_max, y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)))
        if inside0 and not inside1:
            pieces, piece = pieces + [piece], []
    return pieces


def draw_froc(path, curves: dict, *, title: str, rates: tuple = (0.5, 1, 2)) -> None:
    """FROC curves to the PNG `path`; curves: name -> metrics.LesionStats.froc(). Dashed lines
    mark `rates` false positives per image."""
    if not 1 <= len(curves) <= len(PALETTE):
        raise ValueError(f"curves holds {len(curves)} FROCs; the figure draws 1 to {len(PALETTE)}")
    lines = {name: [(f, 100 * s) for f, s in zip(froc["false_positives_per_image"][::-1],
                                                   froc["sensitivity"][::-1])]
             for name, froc in curves.items()}  # (FP per image, %), from the highest threshold
    seen = [f for line in lines.values() for f, s in line if math.isfinite(f) and math.isfinite(s)]
    x_ticks = nice_ticks(0, min(max(seen + [1.25 * max(rates)]), FROC_MAX_RATE))
    y_ticks = nice_ticks(0, 100, count=5)
    image = Image.new("RGB", (FROC_WIDTH, FROC_HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    title_face, (title,) = fit(draw, [title], FROC_WIDTH - 2 * MARGIN, HEADING_SIZE)
    put_text(draw, FROC_WIDTH / 2, MARGIN, title, title_face, anchor="mt")
    text, small = font(TEXT_SIZE), font(SMALL_SIZE)
    left = MARGIN + line_height(draw, text) + 3 * GAP + draw.textlength("100", font=text)
    legend_top = MARGIN + line_height(draw, title_face) + 2 * GAP
    legend_bottom = draw_legend(draw, left, legend_top, list(curves), FROC_WIDTH - MARGIN - left)
    bottom = FROC_HEIGHT - MARGIN - 2 * (line_height(draw, text) + GAP) - GAP
    axes = Axes((left, legend_bottom + 3 * GAP, FROC_WIDTH - MARGIN, bottom), (0, x_ticks[-1]),
                (0, 100))
    axes.draw_y_axis(image, y_ticks, "lesions found (%)", text)
    axes.draw_x_axis(image, x_ticks, "false positives per image", text)
    for rate in rates:  # dashed verticals at the rates the table reports
        x, top = axes.px(rate, 100)[0], axes.box[1]
        for y in range(round(top), round(bottom), 8):
            draw.line([(x, y), (x, min(y + 4, bottom))], fill=MUTED, width=1)
        put_text(draw, x + 4, top + 2, f"{rate:g} FP", small, fill=MUTED)
    for colour, line in zip(PALETTE, lines.values()):
        for piece in clipped_segments(line, x_ticks[-1]):
            pixels = [axes.px(x, y) for x, y in piece]
            if len(pixels) > 1:
                draw.line(pixels, fill=colour, width=3, joint="curve")
        for x, y in line:
            if math.isfinite(x) and math.isfinite(y) and x <= x_ticks[-1]:
                cx, cy = axes.px(x, y)
                draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=colour, outline="white")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())
