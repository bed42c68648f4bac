"""The operator's console: a web page served from the `run` process (DESIGN.md, "Operator
console").

- `config`: the `console:` settings and the checks before listening (loopback or a password).
- `base`: what the console reads from a running camera (the run's live window), as a Protocol.
- `server`: the aiohttp server in its own thread; `app`: its routes.
- `stream`: the live view, JPEG-encoded in its own thread only while someone watches.
- `state`, `health`, `metrics`: /api/state, /healthz and /metrics.
- `security`: Host, password, CSRF and Origin checks; `pages`: the HTML.
- `static/`: the page's HTML, CSS and JavaScript (no build step, nothing from the internet).

The console never blocks a stage: it reads the newest annotated frame and state, and drops (and
counts) what it cannot send. Exam commands from the page take the same path as MQTT `exam/set`.
Thermography is cleared only as an adjunct to mammography; the page says so.
"""
