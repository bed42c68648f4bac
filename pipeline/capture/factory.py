"""Open a source by URI: the one place that maps a scheme to its backend module.

GStreamer (`gi`) is an optional dependency at import time: a DMR-IR or test:// replay never loads
it, so `capture.gst` is imported only when a URI needs it.
"""

from __future__ import annotations

from pipeline.capture.base import Source, SourceOptions, effective_options, is_live, parse_uri
from pipeline.capture.folder import FolderSource
from pipeline.capture.launch import build_launch
from pipeline.capture.synthetic import TestSource


def open_source(uri: str, options: SourceOptions | None = None) -> Source:
    """Build the source for a URI (not yet opened: call `open()`)."""
    options = options or SourceOptions()
    parsed = parse_uri(uri)
    opts = effective_options(parsed, options)
    if parsed.scheme == "dmr":
        source: Source = FolderSource(parsed, opts)
        return source
    if parsed.scheme == "test":
        test_source: Source = TestSource(parsed, opts)
        return test_source
    from pipeline.capture.gst import GstSource  # optional: gi

    return GstSource(parsed, opts, live=is_live(parsed, opts))


def describe_pipeline(uri: str, options: SourceOptions | None = None) -> str:
    """The gst-launch string a URI runs (for logs, tests and docs); a short note for the
    sources that use no GStreamer."""
    options = options or SourceOptions()
    parsed = parse_uri(uri)
    opts = effective_options(parsed, options)
    if parsed.scheme == "dmr":
        return f"(no GStreamer) folder replay of {parsed.location} via pipeline.data.dmr"
    if parsed.scheme == "test":
        return f"(no GStreamer) synthetic stream seed={opts.seed} at {opts.fps:g} fps"
    return build_launch(parsed, opts, live=is_live(parsed, opts)).launch.shown()
