"""The annotated output stage: `base` (the Output contract, options, URIs), `overlay` (what is
drawn on the rendered frame) and `gst` (the GStreamer sinks that write it)."""
