"""Blend schedule values."""

from __future__ import annotations

import math

import pytest

from esper.kasmina.blending import alpha_at, with_defaults
from esper.leyline.v1.control_pb2 import BlendCurve, BlendSchedule


def test_linear_ramp():
    assert [alpha_at(BlendCurve.BLEND_CURVE_LINEAR, t, 4) for t in range(6)] == \
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_cosine_ramp():
    vals = [alpha_at(BlendCurve.BLEND_CURVE_COSINE, t, 4) for t in range(5)]
    expected = [(1 - math.cos(math.pi * t / 4)) / 2 for t in range(5)]
    assert vals == pytest.approx(expected) and vals[0] == 0.0 and vals[-1] == 1.0
    assert vals[2] == pytest.approx(0.5)


def test_bad_ramp_refused_and_defaults_filled():
    with pytest.raises(ValueError):
        alpha_at(BlendCurve.BLEND_CURVE_LINEAR, 1, 0)
    s = with_defaults(BlendSchedule(blend_steps=7))
    assert s.blend_steps == 7 and s.training_steps > 0 and s.curve == BlendCurve.BLEND_CURVE_LINEAR
