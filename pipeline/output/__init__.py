"""The annotated output stage: overlays drawn on the rendered frame, written through GStreamer."""
