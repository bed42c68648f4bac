// thermoscreen operator console. Plain JavaScript, no build step, nothing from the internet.
// It polls /api/state, shows the live MJPEG stream, and sends exam commands as JSON POSTs with
// the page's CSRF token. Every text from the server is set with textContent, never as HTML.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const POLL_MS = 500;
const $ = (id) => document.getElementById(id);
const OPEN_STATES = ["acclimatizing", "ready", "capturing"];
let busy = false;
let lastState = null;

function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds || 0));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function verdictText(v, what) {
  if (!v) return null;
  const thr = v.threshold === null || v.threshold === undefined ? "" :
    ` ${v.score >= v.threshold ? "≥" : "<"} threshold ${v.threshold.toFixed(3)}`;
  return `${v.label}: ${what} ${v.score.toFixed(3)}${thr}, ${v.frames} frames`;
}

function setVerdict(el, v, what, empty) {
  const text = verdictText(v, what);
  el.textContent = text || empty;
  el.className = !text ? "muted" : v.positive === true ? "positive" :
    v.positive === false ? "negative" : "";
}

function nextStep(exam, enabled, started) {
  if (!started) {
    return "The camera is starting (loading the model, opening the source)…";
  }
  if (!enabled) {
    return "Exams are off for this run (see its log: the model has no positive class, or " +
      "there is no MQTT publisher). The live view still works.";
  }
  const state = exam ? exam.state : "idle";
  switch (state) {
    case "acclimatizing":
      return "Step 2 of 4: the patient rests uncovered (acclimatization). The exam becomes " +
        "READY by itself once the rest time has passed and the skin temperature is steady. " +
        "To continue early, write a reason and press \"Ready now\".";
    case "ready":
      return "Step 3 of 4: position the patient, then press the view the camera sees " +
        "(frontal first: it is the view the model was trained on).";
    case "capturing":
      return `Step 3 of 4: capturing the ${exam.view} view; keep the patient still. Press ` +
        "another view when you reposition, or \"Close exam\" to compute the verdict (step 4).";
    case "closed":
      return "Step 4 of 4 done: the exam is closed and its verdict is below; open its report. " +
        "For the next patient, type a new exam ID and press \"Start exam\".";
    case "aborted":
      return `The exam was aborted (${exam.abort_reason || "no reason"}); its record is kept ` +
        "without a verdict. For the next patient, type an exam ID and press \"Start exam\".";
    default:
      return "Step 1 of 4: type the exam's ID (the accession code, never the patient's name) " +
        "and press \"Start exam\". The patient then rests uncovered while the skin settles.";
  }
}

function showPanels(exam, enabled) {
  const state = exam ? exam.state : "idle";
  const open = OPEN_STATES.includes(state);
  $("panel-start").hidden = !enabled || open;
  $("panel-rest").hidden = !enabled || state !== "acclimatizing";
  $("panel-views").hidden = !enabled || !(state === "ready" || state === "capturing");
  $("panel-abort").hidden = !enabled || !open;
  $("close").disabled = state !== "capturing";
}

function renderRest(exam) {
  const a = exam.acclimatization;
  if (!a) return;
  $("rest-time").textContent = clock(a.elapsed_s);
  $("rest-required").textContent = clock(a.required_s);
  $("rest-progress").value = a.required_s > 0 ? Math.min(1, a.elapsed_s / a.required_s) : 1;
  let drift;
  if (a.basis === "time") drift = "not measured (this camera gives no temperatures; time only)";
  else if (a.drift_c_per_min === null) drift = "measuring… (needs a few minutes of frames)";
  else {
    const d = a.drift_c_per_min;
    const ok = Math.abs(d) <= a.drift_limit_c_per_min ? "steady" : "still changing";
    drift = `${d >= 0 ? "+" : ""}${d.toFixed(3)} °C/min (limit ${a.drift_limit_c_per_min} °C/min: ${ok})`;
  }
  $("drift").textContent = drift;
}

function renderViews(exam) {
  for (const b of document.querySelectorAll("button.view")) {
    b.classList.toggle("current", exam.view === b.dataset.view);
  }
  const f = exam.frames || { accepted: 0, rejected: 0 };
  $("frames").textContent = `Frames of this exam: ${f.accepted} accepted, ${f.rejected} ` +
    "rejected by the quality checks.";
}

function renderExam(state) {
  const exam = state.exam;
  const enabled = state.exams_enabled;
  const name = exam ? exam.state : (!state.started ? "starting" : enabled ? "idle" : "off");
  $("exam-state").textContent = name;
  $("exam-label").textContent = exam && exam.exam_id ? `exam ${exam.exam_id}` : "";
  $("next-step").textContent = nextStep(exam, enabled, state.started);
  showPanels(exam, enabled);
  const rolling = (exam && exam.rolling_verdict) || (state.frame && state.frame.rolling_verdict);
  setVerdict($("rolling-verdict"), rolling, "score", "none yet");
  setVerdict($("exam-verdict"), exam && exam.exam_verdict, "mean probability", "none yet " +
    "(needs accepted frames of the model's views)");
  if (!exam) return;
  if (exam.state === "acclimatizing") renderRest(exam);
  if (exam.state === "ready" || exam.state === "capturing") renderViews(exam);
  const finished = exam.state === "closed" || exam.state === "aborted";
  $("report-link").hidden = !finished || !exam.exam_id;
  if (finished && exam.exam_id) {
    $("report-link").firstElementChild.href = `/exams/${encodeURIComponent(exam.exam_id)}`;
    $("report-link").firstElementChild.textContent = `Open the report of exam ${exam.exam_id}`;
  }
  const m = exam.model;
  if (m) {
    const thr = m.threshold === null || m.threshold === undefined ? "argmax" : m.threshold;
    $("model").textContent = `${m.name} ${m.version} (sha256 ${String(m.sha256).slice(0, 12)}…), ` +
      `operating threshold ${thr}, views ${(m.views || []).join(", ")}` +
      (m.synthetic ? " — SYNTHETIC MODEL" : "");
  }
}

function renderFrame(frame) {
  const info = $("frame-info");
  if (!frame) { info.textContent = "Waiting for the first frame…"; return; }
  if (frame.radiometric && frame.thermal) {
    const t = frame.thermal;
    info.textContent = `Radiometric camera: colours are true temperatures (the °C scale is on ` +
      `the image). Now: min ${t.t_min_c.toFixed(1)} °C, max ${t.t_max_c.toFixed(1)} °C ` +
      `(spot marked), mean ${t.t_mean_c.toFixed(1)} °C.`;
  } else {
    info.textContent = "8-bit video: this camera gives no temperatures, so the picture has no " +
      "scale (its shades are brightness, not °C).";
  }
  const q = $("quality");
  q.hidden = !frame.rejected.length;
  q.textContent = frame.rejected.length ?
    `Quality warning: this frame does not count (${frame.rejected.join(", ")}). ` +
    "Check framing, stillness and the camera." : "";
}

function renderHealth(state) {
  const list = $("health");
  list.replaceChildren();
  for (const [name, part] of Object.entries(state.health)) {
    const li = document.createElement("li");
    li.className = part.ok ? "ok" : "bad";
    li.textContent = part.ok ? `${name}: ok` : `${name}: ${part.problem}`;
    list.appendChild(li);
  }
}

function render(state) {
  lastState = state;
  $("synthetic-banner").hidden = !state.synthetic_model;
  renderExam(state);
  renderFrame(state.frame);
  renderHealth(state);
  const err = state.exam && state.exam.last_error;
  if (err && !$("command-error").dataset.local) showError(err);
}

function showError(text, local) {
  const el = $("command-error");
  el.hidden = !text;
  el.textContent = text || "";
  if (local) el.dataset.local = "1"; else delete el.dataset.local;
}

async function refresh() {
  try {
    const response = await fetch("/api/state", { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
    $("offline").hidden = true;
  } catch (err) {
    $("offline").hidden = false;
  }
}

async function send(command) {
  if (busy) return;
  busy = true;
  for (const b of document.querySelectorAll("main button")) b.disabled = true;
  try {
    const response = await fetch("/api/exam", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF },
      body: JSON.stringify(command),
    });
    let body;
    try { body = await response.json(); } catch (e) { body = { ok: false, error: `HTTP ${response.status}` }; }
    if (body.ok) showError(null); else showError(`Not done: ${body.error}`, true);
  } catch (err) {
    showError(`Not sent: ${err.message}. Is the console still running?`, true);
  } finally {
    busy = false;
    for (const b of document.querySelectorAll("main button")) b.disabled = false;
    await refresh();
  }
}

function number(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}

function startExam(event) {
  event.preventDefault();
  const input = $("exam-id-input");
  if (!input.checkValidity()) {
    showError("The exam ID must be 1-64 letters, digits, dots, dashes or underscores " +
      "(an accession code, never a name).", true);
    input.focus();
    return;
  }
  const command = { action: "start", exam_id: input.value.trim() };
  const ambient = number("ambient-input");
  const humidity = number("humidity-input");
  if (ambient !== undefined) command.ambient_c = ambient;
  if (humidity !== undefined) command.humidity_pct = humidity;
  send(command).then(() => { if (lastState && lastState.exam && lastState.exam.exam_id === command.exam_id) input.value = ""; });
}

function readyNow() {
  const reason = $("ready-reason").value.trim();
  if (!reason) { showError("Write why the rest is cut short; it is kept in the record.", true); return; }
  send({ action: "ready", reason });
}

function abortExam() {
  const reason = $("abort-reason").value.trim();
  if (!reason) { showError("Write why the exam is aborted; it is kept in the record.", true); return; }
  send({ action: "abort", reason }).then(() => { $("abort-reason").value = ""; });
}

function startLive() {
  const img = $("live");
  img.onerror = () => { setTimeout(() => { img.src = `/stream.mjpg?retry=${Date.now()}`; }, 2000); };
  img.src = "/stream.mjpg";
}

document.addEventListener("DOMContentLoaded", () => {
  $("panel-start").addEventListener("submit", startExam);
  $("ready").addEventListener("click", readyNow);
  $("close").addEventListener("click", () => send({ action: "close" }));
  $("abort").addEventListener("click", abortExam);
  for (const b of document.querySelectorAll("button.view")) {
    b.addEventListener("click", () => send({ action: "view", view: b.dataset.view }));
  }
  refresh();
  setInterval(refresh, POLL_MS);
});
// The live stream never finishes loading, so it starts after the page's load event.
window.addEventListener("load", startLive);
