"""`thermoscreen run`: the stage threads, their wiring from the config, and the command.

command.py   the CLI: flags -> config, signals, summary, exit codes
wiring.py    config -> per-stage options; opens source, classifier, publisher, output; run()
options.py   the small frozen options each stage gets (never the whole AppConfig)
pipeline.py  Pipeline: starts the stage threads, watches the shutdown, sums up
stages.py    the stage loops: capture, classify workers, publish, output
queues.py    the bounded queues between them, end markers, the shared stop/failure state
stats.py     counters, drops, latency percentiles, the `stats` message, RunSummary
base.py      contracts: Classified, ResultSink (the publisher), FrameConsumer (per-frame hooks)
inbox.py     CommandInbox: other threads' commands, run in the publish thread
session.py   the session's bookkeeping and rolling verdict
malloc.py    glibc allocator tuning
"""
