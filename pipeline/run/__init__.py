"""`thermoscreen run`: the stage threads, their wiring from the config, and the command.

command.py   the CLI: flags -> config, signals, summary, exit codes
wiring.py    config -> per-stage options; opens source, classifier, publisher, output; run()
options.py   the small frozen options each stage gets (never the whole AppConfig)
pipeline.py  Pipeline: starts the stage threads, watches the shutdown, sums up
stages.py    the stage loops: capture, classify workers, publish, output
queues.py    the bounded queues between them, end markers, the shared stop/failure state
stats.py     counters, drops, latency percentiles, the `stats` message, RunSummary
base.py      contracts: Classified, ResultSink/ExamSink (the publisher), ExamHook, FrameConsumer
inbox.py     CommandInbox: other threads' commands, run in the publish thread
session.py   the session's bookkeeping and rolling verdict
exam.py      ExamTracker: the screening exam in the publish thread (exam/set, records, replays)
live.py      LiveView: the operator console's thread-safe window (frames, exam, health, commands)
examctl.py   `thermoscreen exam start|ready|view|close|abort` over MQTT
malloc.py    glibc allocator tuning
"""
