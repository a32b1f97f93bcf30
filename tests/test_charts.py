"""Tests for charts.py: the figure is a PNG of the promised size, every decoder shows in both panels, failed folds and
NaN epochs are left out rather than drawn at 0, the output is deterministic, and inconsistent inputs are refused.
The FROC figure draws each curve and stops at its axis."""
import math

import numpy as np
import pytest
from PIL import Image

from engine import charts
from engine.charts import draw_crossval

DECODERS = {"fusion": 0.62, "unet": 0.58, "unetplusplus": 0.57}


def synthetic(folds: int = 5, epochs: int = 30) -> tuple[dict, dict]:
    """3 decoders x 5 folds with rising learning curves; unet's fold 3 failed (NaN) and its curve is empty."""
    rng = np.random.default_rng(0)
    runs, curves = {}, {}
    for name, mean in DECODERS.items():
        scores = mean + rng.normal(0, 0.05, folds)
        runs[name] = [{"fold": k, "dice_mean_per_image": s, "iou_mean_per_image": s * 0.8, "dice_pooled": s + 0.03,
                       "iou_pooled": s * 0.85} for k, s in enumerate(scores.tolist())]
        curves[name] = [[{"epoch": e, "train_loss": 1 - s * e / epochs, "val_dice_mean_per_image":
                          s * (1 - math.exp(-e / 8))} for e in range(epochs)] for s in scores.tolist()]
    runs["unet"][3]["dice_mean_per_image"] = math.nan
    curves["unet"][3] = []
    return runs, curves


def draw(tmp_path, runs, curves, **options) -> np.ndarray:
    path = tmp_path / "crossval.png"
    draw_crossval(path, runs, curves, title="5-fold cross-validation", **options)
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def colour_pixels(pixels: np.ndarray, colour: tuple) -> int:
    return int((pixels == np.array(colour, dtype=np.uint8)).all(axis=2).sum())


def panels(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The left panel, and the middle half of the right one in height: below its legend, where only the curves are."""
    middle = slice(charts.HEIGHT // 4, 3 * charts.HEIGHT // 4)
    return pixels[:, :charts.LEFT_PANEL_WIDTH], pixels[middle, charts.LEFT_PANEL_WIDTH:]


def test_png_of_the_figure_size_written_alone_and_deterministic(tmp_path):
    runs, curves = synthetic()
    pixels = draw(tmp_path, runs, curves)
    assert pixels.shape == (charts.HEIGHT, charts.WIDTH, 3)
    assert (tmp_path / "crossval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["crossval.png"]  # no temporary file left behind
    assert (draw(tmp_path, runs, curves) == pixels).all()


def test_every_decoder_is_drawn_in_both_panels(tmp_path):
    pixels = draw(tmp_path, *synthetic())
    left, right = panels(pixels)
    for colour in charts.PALETTE[:len(DECODERS)]:
        assert colour_pixels(left, colour) > 100, f"{colour}: no dots or mean bar in the per-fold panel"
        assert colour_pixels(right, colour) > 100, f"{colour}: no learning curves"
    assert colour_pixels(pixels, charts.PALETTE[len(DECODERS)]) == 0  # the colour of a fourth decoder


def test_failed_folds_and_missing_epochs_are_left_out_not_drawn_at_zero(tmp_path):
    runs, curves = synthetic()
    runs["unetplusplus"] = [{**run, "dice_mean_per_image": None} for run in runs["unetplusplus"]]  # every fold failed
    curves["unetplusplus"] = [[{**record, "val_dice_mean_per_image": None} for record in fold]
                              for fold in curves["unetplusplus"]]
    curves["unet"][0][10]["val_dice_mean_per_image"] = math.nan  # one bad epoch breaks the line
    left, right = panels(draw(tmp_path, runs, curves))
    unetplusplus = charts.PALETTE[2]
    assert colour_pixels(left, unetplusplus) == 0 and colour_pixels(right, unetplusplus) == 0
    assert colour_pixels(left, charts.PALETTE[1]) > 100 and colour_pixels(right, charts.PALETTE[1]) > 100


@pytest.mark.parametrize("metric", ["iou_mean_per_image", "dice_pooled"])
def test_other_metrics_and_a_single_decoder_and_fold(tmp_path, metric):
    runs = {"fusion": [{"fold": 1, metric: 0.6}]}
    pixels = draw(tmp_path, runs, {"fusion": [[]]}, metric=metric)
    assert colour_pixels(pixels[:, :charts.LEFT_PANEL_WIDTH], charts.PALETTE[0]) > 0


def test_inconsistent_inputs_are_refused_with_the_problem_named(tmp_path):
    runs, curves = synthetic()
    path = tmp_path / "crossval.png"
    curves["unet_plus_plus"] = curves.pop("unetplusplus")
    with pytest.raises(ValueError, match=r"different decoders: only in runs \['unetplusplus'\], only in curves "
                                         r"\['unet_plus_plus'\]"):
        draw_crossval(path, runs, curves, title="t")
    runs, curves = synthetic()
    curves["unet"].pop()
    with pytest.raises(ValueError, match="'unet': 5 folds in runs but 4 in curves"):
        draw_crossval(path, runs, curves, title="t")
    with pytest.raises(ValueError, match="metric 'dice' is not one of"):
        draw_crossval(path, *synthetic(), title="t", metric="dice")
    runs, curves = synthetic()
    runs["fusion"][1]["fold"] = 0
    with pytest.raises(ValueError, match=r"'fusion': fold numbers repeat: \[0, 0, 2, 3, 4\]"):
        draw_crossval(path, runs, curves, title="t")
    assert not path.exists()


def froc(scale: float) -> dict:
    """A FROC as metrics.LesionStats.froc() gives it: sensitivity and FP per image per threshold."""
    rates = [12 * scale * (1 - t) ** 3 for t in np.linspace(0.01, 0.99, 21)]
    return {"thresholds": np.linspace(0.01, 0.99, 21).tolist(), "false_positives_per_image": rates,
            "sensitivity": [min(1.0, 0.3 + 0.25 * math.log1p(f)) for f in rates]}


def test_froc_figure_draws_each_curve_in_its_colour_and_stops_at_the_axis_end(tmp_path):
    path = tmp_path / "froc.png"
    charts.draw_froc(path, {"unet": froc(1), "fusion": froc(0.5)}, title="FROC")
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (charts.FROC_HEIGHT, charts.FROC_WIDTH, 3)
    for colour in charts.PALETTE[:2]:
        assert colour_pixels(pixels, colour) > 300
    assert colour_pixels(pixels, charts.PALETTE[2]) == 0
    right_margin = pixels[:, charts.FROC_WIDTH - charts.MARGIN + 4:]  # past 8 FP per image: nothing
    assert colour_pixels(right_margin, charts.PALETTE[0]) == 0
    charts.draw_froc(tmp_path / "again.png", {"unet": froc(1), "fusion": froc(0.5)}, title="FROC")
    assert (tmp_path / "again.png").read_bytes() == path.read_bytes()
    with pytest.raises(ValueError, match="1 to 6"):
        charts.draw_froc(path, {str(k): froc(1) for k in range(7)}, title="FROC")


def test_clipped_segments_cut_at_the_edge_and_break_at_nan():
    points = [(0, 0), (1, 10), (10, 20), (2, 30), (math.nan, math.nan), (1, 1)]
    assert charts.clipped_segments(points, 4) == [[(0, 0), (1, 10), (4, 10 + 10 * 3 / 9)],
                                                  [(4, 20 + 10 * 6 / 8), (2, 30)], [(1, 1)]]
