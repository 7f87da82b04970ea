"""Live frames: one event model for every source (DECTRIS stream v1/v2, folder watch, file replay), the
embeddable engine with its delivery modes and frame accounting, and the sinks (peak tables, CXI, result messages).

Sources know no model and the engine knows no source: a source yields :mod:`gixdrt.live.events`, the series
tracker turns them into accounted frames, the engine runs the pipeline on them, the sinks write what comes out.
"""
from .events import DecodeError, Event, FrameEvent, SeriesEnd, SeriesStart

__all__ = ["DecodeError", "Event", "FrameEvent", "SeriesEnd", "SeriesStart"]
