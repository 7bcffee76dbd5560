// publish.js — the browser publisher: camera + microphone, preview, WHIP to /whip/<stream>.
//
// Query parameters: token (Bearer for WHIP), autostart=1 (publish as soon as media is ready),
// simulcast=0 (send one encoding instead of l/m/h).
// For tests: window.castPublisher = {pc, state, stream, session, error, start(), stop()}.

import { pageTarget, whipPublish, WishError } from "./wish.js";

const STATS_INTERVAL_MS = 1000;

const { stream: streamName, token, params } = pageTarget("publish");
const whipUrl = `/whip/${encodeURIComponent(streamName)}`;

const els = {
  name: document.getElementById("stream-name"),
  preview: document.getElementById("preview"),
  badge: document.getElementById("live-badge"),
  toggle: document.getElementById("toggle"),
  simulcast: document.getElementById("simulcast"),
  status: document.getElementById("status"),
  stats: document.getElementById("stats"),
};

const publisher = {
  pc: null,
  state: "idle", // idle | media | ready | connecting | live | stopped | failed | error
  stream: null,
  session: null,
  error: null,
  start,
  stop,
};
window.castPublisher = publisher;

let statsTimer = null;
let lastOutbound = null;

function setState(state, message) {
  publisher.state = state;
  els.status.dataset.state = state;
  els.status.textContent = message;
  els.badge.hidden = state !== "live";
  const busy = state === "connecting" || state === "live";
  els.toggle.textContent = busy ? "Stop" : "Start";
  els.toggle.classList.toggle("danger", busy);
  els.toggle.disabled = state === "idle" || state === "media" || (state === "error" && !publisher.stream);
  els.simulcast.disabled = busy;
}

async function acquireMedia() {
  setState("media", "Requesting camera and microphone…");
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } },
      audio: true,
    });
    publisher.stream = stream;
    els.preview.srcObject = stream;
    const v = stream.getVideoTracks()[0]?.getSettings() || {};
    setState("ready", `Camera ready${v.width ? ` (${v.width}×${v.height})` : ""}. Press Start to publish.`);
    return true;
  } catch (err) {
    publisher.error = String(err);
    setState("error", `Camera/microphone unavailable: ${err.name || "Error"}: ${err.message}`);
    return false;
  }
}

async function start() {
  if (!publisher.stream || publisher.state === "connecting" || publisher.state === "live") return;
  publisher.error = null;
  setState("connecting", `Connecting to ${whipUrl}…`);
  try {
    const session = await whipPublish(whipUrl, publisher.stream, { token, simulcast: els.simulcast.checked });
    publisher.session = session;
    publisher.pc = session.pc;
    watchConnection(session);
  } catch (err) {
    publisher.error = err instanceof WishError ? `${err.status} ${err.body}`.trim() : String(err);
    setState("failed", `Publish failed: ${err.message}`);
  }
}

function watchConnection(session) {
  const pc = session.pc;
  const update = () => {
    if (publisher.session !== session) return;
    switch (pc.connectionState) {
      case "connected":
        setState("live", `Live on ${streamName}${els.simulcast.checked ? " (simulcast)" : ""}.`);
        startStats();
        break;
      case "disconnected":
        setState("connecting", "Connection interrupted, waiting for it to recover…");
        break;
      case "failed":
        setState("failed", "Connection failed. Press Start to try again.");
        teardown();
        break;
      default:
        break;
    }
  };
  pc.addEventListener("connectionstatechange", update);
  update();
}

function teardown() {
  const session = publisher.session;
  publisher.session = null;
  stopStats();
  if (session) session.close();
}

async function stop() {
  teardown();
  setState("stopped", "Stopped. Press Start to publish again.");
}

function startStats() {
  if (statsTimer) return;
  statsTimer = setInterval(renderStats, STATS_INTERVAL_MS);
}

function stopStats() {
  clearInterval(statsTimer);
  statsTimer = null;
  lastOutbound = null;
  els.stats.replaceChildren();
}

async function renderStats() {
  const pc = publisher.pc;
  if (!pc) return;
  const report = await pc.getStats();
  const layers = [];
  let bytes = 0;
  let timestamp = 0;
  report.forEach((s) => {
    if (s.type !== "outbound-rtp" || s.kind !== "video") return;
    bytes += s.bytesSent || 0;
    timestamp = s.timestamp;
    const res = s.frameWidth ? `${s.frameWidth}×${s.frameHeight}` : "–";
    const fps = s.framesPerSecond != null ? `${Math.round(s.framesPerSecond)} fps` : "";
    layers.push([s.rid ? `layer ${s.rid}` : "video", `${res} ${fps}`.trim()]);
  });
  let kbps = "–";
  if (lastOutbound && timestamp > lastOutbound.timestamp) {
    kbps = `${Math.round(((bytes - lastOutbound.bytes) * 8) / (timestamp - lastOutbound.timestamp))} kbit/s`;
  }
  lastOutbound = { bytes, timestamp };
  renderList(els.stats, [...layers.sort(), ["video bitrate", kbps], ["connection", pc.connectionState]]);
}

function renderList(dl, rows) {
  dl.replaceChildren(
    ...rows.flatMap(([k, v]) => {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      return [dt, dd];
    }),
  );
}

els.toggle.addEventListener("click", () => {
  if (publisher.state === "connecting" || publisher.state === "live") stop();
  else start();
});
window.addEventListener("pagehide", () => teardown());

els.name.textContent = streamName;
document.title = `Publish ${streamName} · webrtc-cast`;
els.simulcast.checked = params.get("simulcast") !== "0"; // three layers unless ?simulcast=0
setState("idle", "Starting…");
if ((await acquireMedia()) && params.get("autostart") === "1") await start();
