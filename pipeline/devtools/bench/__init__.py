"""`thermoscreen bench`: the bare model, the pipeline on every kind of recording and live, and the
seed's naive loop, side by side on one machine, with the same models and the same frames.

Why: the pipeline's threads, queues, outbox and QoS 1 publishing must cost almost nothing on top
of the model. Ratios are taken within one run because a shared machine is noisy.

- `bare`: ONNX Runtime alone on ready tensors (the pipeline's own classifier), one frame at a
  time on every core and one frame per core side by side; the faster is the limit.
- `replay`: `thermoscreen run SOURCE` as a child for each source kind (`sources`: MP4, a 16-bit
  PNG sequence, a DMR-IR matrix folder), to a mosquitto the bench starts on a free loopback port,
  counted from the first frame's capture to the last result's delivery; with the process's CPU
  per result, thread by thread, the model's share apart (`cpu`, `probe`).
- `live`: `thermoscreen run gst://videotestsrc is-live=true ...` at camera rates for a set time:
  latency to delivery (p50/p95/p99), drops, and its trend.
- the naive loop (`pipeline.devtools.naive`, a child, so the bench never imports torch).
- `summary`: ratios per repeat with their spread, and the targets; `report`: bench.md.
- `command`: the arguments and the order of the measurements.

Thermography is an adjunct to mammography only. This package imports nothing on purpose: the
probed child (`probe`) loads only what `thermoscreen run` loads.
"""
