"""One place that loads GStreamer through PyGObject.

GstApp and GstVideo must be loaded before the first appsink/appsrc element is created in a
process: PyGObject caches the Python class of an element type the first time it sees one, and an
appsink created before GstApp was imported stays a plain Gst.Element without `pull_sample`.
Every module that builds GStreamer pipelines imports Gst from here.
"""

from __future__ import annotations

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, Gst, GstApp, GstVideo  # noqa: E402

if not Gst.is_initialized():
    Gst.init(None)

__all__ = ["GLib", "Gst", "GstApp", "GstVideo"]
