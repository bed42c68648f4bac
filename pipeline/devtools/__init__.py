"""Developer tools (benchmark, demo, local mosquitto, FLOP counting, the naive loop). Commands and
tests use them; the `run` path never imports them."""
