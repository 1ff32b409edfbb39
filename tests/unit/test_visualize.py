"""Pictures of HOG targets and predictions: the token features regrouped into cells, glyph
geometry and the prediction panel."""

import numpy as np
import pytest

from maskfeat_jax import hog, visualize


def edge_image(vertical: bool, size=32) -> np.ndarray:
    image = np.zeros((size, size, 3), np.uint8)
    if vertical:
        image[:, size // 2 :] = 255
    else:
        image[size // 2 :, :] = 255
    return image


def test_token_features_regroup_into_the_hog_cells():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 48, 3)).astype(np.float32)
    tokens = np.asarray(hog.hog_targets(images, patch_size=16, cell_size=8))
    cells = np.asarray(hog.hog(images, cell_size=8))  # [B, 4, 6, C, 9]
    for i in range(2):
        got = visualize.cell_histograms(tokens[i], (2, 3), channels=3, nbins=9, cells=2)
        np.testing.assert_allclose(got, cells[i].mean(axis=2), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("vertical", [True, False])
def test_glyph_strokes_run_along_the_edge(vertical):
    image = edge_image(vertical)
    tokens = np.asarray(hog.hog_targets(image[None].astype(np.float32), cell_size=8))[0]
    cells = visualize.cell_histograms(tokens, (2, 2), channels=3, nbins=9, cells=2)
    px = 24
    glyphs = visualize.draw_glyphs(cells, px)
    assert glyphs.shape == (4 * px, 4 * px)
    # A cell on the edge: its brightest stroke follows the edge.
    r, c = (0, 1) if vertical else (1, 0)
    cell = glyphs[r * px : (r + 1) * px, c * px : (c + 1) * px]
    ys, xs = np.nonzero(cell >= 200)
    assert len(ys) >= px // 2
    # The stroke's direction (principal axis of its pixels) is the edge's, up to half a bin
    # (10 degrees: a bin's stroke is drawn at the bin centre).
    coords = np.stack([xs, ys], axis=1).astype(float)
    axis = np.linalg.svd(coords - coords.mean(0), full_matrices=False)[2][0]
    edge = np.array([0.0, 1.0]) if vertical else np.array([1.0, 0.0])
    angle = np.degrees(np.arccos(min(1.0, abs(float(axis @ edge)))))
    assert angle <= 10.0 + 2.0, angle
    assert max(np.ptp(xs), np.ptp(ys)) >= 0.8 * px
    # A flat cell far from the edge has no gradient and stays black.
    assert glyphs[:px, :px].max() == 0


def test_prediction_panel_draws_masked_tokens_only():
    image = edge_image(True, 32)
    tokens = np.asarray(hog.hog_targets(image[None].astype(np.float32), cell_size=8))[0]
    mask = np.array([[True, False], [False, True]])
    row = visualize.panel_row(image, mask, tokens, tokens, patch_size=16, cell_size=8, nbins=9)
    px = 12  # the default glyph cell for 8-px cells
    width = 4 * px  # 4 cells across
    assert row.shape == (4 * px, 4 * width + 3 * 4, 3)
    masked_panel = row[:, width + 4 : 2 * width + 4]
    assert (masked_panel[: 16 * px // 8, : 16 * px // 8] == visualize.GREY).all()  # token (0, 0)
    pred_panel = row[:, 3 * width + 12 :, 0]
    assert pred_panel[: 2 * px, 2 * px :].max() == 0  # token (0, 1) is visible: not drawn
    assert pred_panel[2 * px :, 2 * px :].max() > 0  # token (1, 1) is masked and on the edge
    target_panel = row[:, 2 * width + 8 : 3 * width + 8, 0]
    np.testing.assert_array_equal(target_panel[2 * px :, 2 * px :], pred_panel[2 * px :, 2 * px :])
