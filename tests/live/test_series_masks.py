"""A series' start message brings its pixel_mask and saturation_value: they apply to that series' frames only."""
from __future__ import annotations

import numpy as np

from gixdrt.io.masks import Masks
from gixdrt.live.engine import LiveEngine, PipelineRunner
from gixdrt.live.events import FrameEvent, SeriesEnd, SeriesStart


class _FakePipeline:
    """Records the masks in force at each call and the frames of the call."""

    input = "raw"

    def __init__(self, masks):
        self.masks = masks
        self.calls = []

    def _detect_batch(self, items):
        self.calls.append((self.masks, [image_id for image_id, _, _ in items]))
        return [image_id for image_id, _, _ in items]


def _start(uid, mask=None, saturation=None):
    return SeriesStart(1, uid, number_of_images=2, channels=("data",), image_shape=(4, 5),
                       pixel_mask={} if mask is None else {"data": mask}, saturation_value=saturation)


def _frame(uid, i):
    return FrameEvent(1, uid, i, {"data": np.full((4, 5), i, np.uint16)})


def test_each_series_gets_its_start_masks_joined_with_the_configs():
    config_pixels = np.zeros((4, 5), np.uint8)
    config_pixels[0, 0] = 1
    base = Masks(config_pixels, None, ("config",))
    pipe = _FakePipeline(base)
    runner = PipelineRunner(pipe)
    mask_a = np.zeros((4, 5), np.uint32)
    mask_a[2, 3] = 8  # DECTRIS bit flags: any nonzero bit masks the pixel
    runner.open_series(_start("a", mask_a, 1000))
    runner.open_series(_start("b"))
    out = runner([_frame("a", 0), _frame("a", 1), _frame("b", 0)])
    assert out == [0, 1, 0]
    (masks_a, ids_a), (masks_b, ids_b) = pipe.calls  # one call per series
    assert ids_a == [0, 1] and ids_b == [0]
    expected_a = config_pixels.copy()
    expected_a[2, 3] = 1
    np.testing.assert_array_equal(masks_a.pixels, expected_a)
    assert masks_a.saturation == 1000.0
    np.testing.assert_array_equal(masks_b.pixels, config_pixels)  # b brought nothing: the config's mask only
    assert masks_b.saturation is None
    assert runner.masks_of("unknown") is base


def test_the_engine_opens_series_in_the_runner_before_their_frames():
    pipe = _FakePipeline(None)
    runner = PipelineRunner(pipe)
    started = []
    mask = np.ones((4, 5), np.uint8)
    with LiveEngine(runner, on_series_start=started.append) as engine:
        engine.feed(_start("s", mask, 50))
        engine.feed(_frame("s", 0))
        engine.feed(SeriesEnd(1, "s"))
        assert engine.wait_idle(5)
    assert [s.series_unique_id for s in started] == ["s"]
    masks, ids = pipe.calls[-1]
    assert ids == [0] and masks.saturation == 50.0 and masks.pixels.all()
