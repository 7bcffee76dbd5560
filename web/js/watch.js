// watch.js — the WebRTC viewer: WHEP from /whep/<stream>, live stats, reconnect with backoff; LL-HLS fallback.
//
// Query parameters: token (Bearer for WHEP); mode=hls forces LL-HLS (hls.js).
// Falls back to LL-HLS when WebRTC is not playing within FALLBACK_MS, or when the server answers 503 "full" with
// {"fallback": "hls"}. window.castHls describes the HLS player once it runs (see hls-fallback.js).
// For tests: window.castViewer = {pc, state, session, reconnects, lastError, stats()} where stats() resolves
// to the inbound-rtp video stats (a plain object) or null.

import { hlsStats, startHls } from "./hls-fallback.js";
import { pageTarget, WishError, whepPlay } from "./wish.js";

const STATS_INTERVAL_MS = 1000;
const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 15000;
const DISCONNECTED_GRACE_MS = 1000; // "disconnected" this long: probe the serving node, re-join if it is gone
const NODE_CHECK_MS = 250; // relay tree: how often to look for a stall while playing
const NODE_STALL_MS = 800; // no new frame this long while playing: probe the node serving us
const NODE_PROBE_TIMEOUT_MS = 500; // no answer to GET {session} in this long (or 404): the node is gone
const STALL_RECONNECT_MS = 15000; // connected but no new decoded frame for this long: start over
const FALLBACK_MS = 4000; // WebRTC not playing this long after the first attempt: switch to LL-HLS

const { stream: streamName, token } = pageTarget("watch");
const whepUrl = `/whep/${encodeURIComponent(streamName)}`;

const els = {
  name: document.getElementById("stream-name"),
  video: document.getElementById("player"),
  badge: document.getElementById("live-badge"),
  unmute: document.getElementById("unmute"),
  reconnect: document.getElementById("reconnect"),
  status: document.getElementById("status"),
  stats: document.getElementById("stats"),
};

let session = null;
let attempt = 0; // consecutive failed attempts, drives the backoff
let retryTimer = null;
let graceTimer = null;
let lastProgress = { frames: -1, at: 0 };
let lastBytes = null;
let hlsState = null; // set once the LL-HLS fallback runs; WebRTC is then given up
let fallbackTimer = null;
const forceHls = new URLSearchParams(location.search).get("mode") === "hls";
let avoidNode = null; // relay tree: origin of a node that died under us; the origin is asked to avoid it
let probing = false;
let playedSinceRetry = false; // WebRTC played since the last retry was scheduled

const viewer = {
  get pc() {
    return session ? session.pc : null;
  },
  state: "idle", // idle | connecting | waiting | playing | retrying
  session: null,
  reconnects: 0,
  lastError: null,
  stats: inboundVideoStats,
};
window.castViewer = viewer;

function setState(state, message) {
  viewer.state = state;
  els.status.dataset.state = state;
  els.status.textContent = message;
  els.badge.hidden = state !== "playing";
}

async function inboundVideoStats() {
  const pc = viewer.pc;
  if (!pc) return null;
  const report = await pc.getStats();
  let found = null;
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") found = { ...s };
  });
  return found;
}

async function switchToHls(reason) {
  if (hlsState) return;
  clearTimeout(fallbackTimer);
  clearTimeout(retryTimer);
  clearTimeout(graceTimer);
  closeSession();
  hlsState = { pending: true };
  viewer.transport = "hls";
  setState("connecting", `${reason} Switching to LL-HLS…`);
  els.video.srcObject = null;
  hlsState = await startHls(els.video, streamName, {
    onStatus: (state, message) => setState(state === "unavailable" ? "unavailable" : state, message),
  });
}

async function connect() {
  if (hlsState) return;
  clearTimeout(retryTimer);
  clearTimeout(graceTimer);
  retryTimer = null;
  closeSession();
  setState("connecting", `Connecting to ${whepUrl}…`);
  try {
    const url = avoidNode ? `${whepUrl}?avoid=${encodeURIComponent(avoidNode)}` : whepUrl;
    const result = await whepPlay(url, { token }); // the origin may answer 307 to a relay: fetch follows it
    avoidNode = null;
    session = result.session;
    viewer.session = session;
    els.video.srcObject = result.stream;
    lastProgress = { frames: -1, at: performance.now() };
    watchConnection(session);
  } catch (err) {
    viewer.lastError = err instanceof WishError ? { status: err.status, body: err.body } : { status: 0, body: String(err) };
    let why = err.message;
    if (err instanceof WishError && err.status === 503 && err.fallback === "hls") {
      switchToHls("WebRTC is full on this server.");
      return;
    }
    scheduleReconnect(why);
  }
}

function watchConnection(current) {
  const pc = current.pc;
  const update = () => {
    if (session !== current) return;
    switch (pc.connectionState) {
      case "connected":
        clearTimeout(graceTimer);
        setState("waiting", "Connected, waiting for video…");
        break;
      case "disconnected":
        setState("waiting", "Connection interrupted, waiting for it to recover…");
        clearTimeout(graceTimer);
        graceTimer = setTimeout(() => {
          if (session === current && pc.connectionState !== "connected") rejoinIfGone(current, "Connection lost", true);
        }, DISCONNECTED_GRACE_MS);
        break;
      case "failed":
      case "closed":
        scheduleReconnect(`Connection ${pc.connectionState}`);
        break;
      default:
        break;
    }
  };
  pc.addEventListener("connectionstatechange", update);
  update();
}

// Relay tree: is the node that serves `current` gone? GET of the session URL: no answer in time, or 404.
async function nodeGone(current) {
  if (!current.url) return false;
  try {
    const r = await fetch(current.url, { method: "GET", signal: AbortSignal.timeout(NODE_PROBE_TIMEOUT_MS) });
    return r.status === 404;
  } catch {
    return true;
  }
}

// Playing stalled or the connection dropped: when the node is gone, re-join at once through the origin
// (which then avoids that node); `always`: reconnect even when the node still answers.
async function rejoinIfGone(current, reason, always = false) {
  if (probing || session !== current) return;
  probing = true;
  const gone = await nodeGone(current).finally(() => (probing = false));
  if (session !== current) return;
  if (gone) {
    avoidNode = new URL(current.url).origin;
    attempt = 0;
    scheduleReconnect(`${reason}: the server is gone, re-joining`);
  } else if (always) {
    scheduleReconnect(reason);
  } else {
    lastProgress.at = performance.now(); // the node is there: the stream itself is quiet; look again later
  }
}

function checkNode() {
  if (hlsState || !session || viewer.state !== "playing" || probing) return;
  const quality = els.video.getVideoPlaybackQuality ? els.video.getVideoPlaybackQuality() : null;
  const frames = quality ? quality.totalVideoFrames : lastProgress.frames;
  const now = performance.now();
  if (frames !== checkNode.frames) {
    checkNode.frames = frames;
    checkNode.at = now;
  } else if (now - checkNode.at > NODE_STALL_MS) {
    checkNode.at = now;
    rejoinIfGone(session, "Video stopped");
  }
}

function closeSession() {
  if (session) session.close();
  session = null;
  viewer.session = null;
  lastBytes = null;
}

function scheduleReconnect(reason) {
  if (hlsState) return;
  closeSession();
  attempt += 1;
  const base = Math.min(BACKOFF_MIN_MS * 2 ** (attempt - 1), BACKOFF_MAX_MS);
  // the first retry after playing goes at once (a relay died: the origin places us elsewhere); a session that
  // never played (404, 409, refused) backs off from the first retry
  const delay = attempt === 1 && playedSinceRetry ? 50 : Math.round(base * (1 + Math.random() * 0.2));
  playedSinceRetry = false;
  setState("retrying", `${reason} — retrying in ${(delay / 1000).toFixed(1)} s (attempt ${attempt + 1})`);
  clearTimeout(retryTimer);
  retryTimer = setTimeout(() => {
    viewer.reconnects += 1;
    connect();
  }, delay);
}

function fmt(n, digits = 0) {
  return n == null || Number.isNaN(n) ? "–" : Number(n).toFixed(digits);
}

async function tick() {
  if (hlsState && hlsState.hls) {
    renderList(els.stats, hlsStats(hlsState));
    return;
  }
  const s = await inboundVideoStats().catch(() => null);
  if (!s) {
    els.stats.replaceChildren();
    return;
  }
  const now = performance.now();
  const frames = s.framesDecoded || 0;
  if (frames !== lastProgress.frames) {
    lastProgress = { frames, at: now };
    if (frames > 0 && viewer.state !== "playing") {
      attempt = 0;
      clearTimeout(fallbackTimer); // WebRTC played: a later re-join (a relay died) must not fall back to HLS
      playedSinceRetry = true;
      setState("playing", `Playing ${streamName}.`);
    }
  } else if (viewer.state === "playing" || viewer.state === "waiting") {
    if (now - lastProgress.at > STALL_RECONNECT_MS) {
      scheduleReconnect(`No video for ${Math.round(STALL_RECONNECT_MS / 1000)} s`);
      return;
    }
  }
  let kbps = null;
  if (lastBytes && s.timestamp > lastBytes.timestamp) {
    kbps = ((s.bytesReceived - lastBytes.bytes) * 8) / (s.timestamp - lastBytes.timestamp);
  }
  lastBytes = { bytes: s.bytesReceived || 0, timestamp: s.timestamp };
  const bufferMs = s.jitterBufferEmittedCount ? (s.jitterBufferDelay / s.jitterBufferEmittedCount) * 1000 : null;
  renderList(els.stats, [
    ["resolution", s.frameWidth ? `${s.frameWidth}×${s.frameHeight}` : "–"],
    ["fps", fmt(s.framesPerSecond)],
    ["frames decoded", fmt(s.framesDecoded)],
    ["frames dropped", fmt(s.framesDropped)],
    ["freezes", `${fmt(s.freezeCount)} (${fmt(s.totalFreezesDuration, 1)} s)`],
    ["packets lost", fmt(s.packetsLost)],
    ["jitter buffer", bufferMs == null ? "–" : `${fmt(bufferMs)} ms`],
    ["bitrate", kbps == null ? "–" : `${fmt(kbps)} kbit/s`],
    ["reconnects", String(viewer.reconnects)],
  ]);
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

els.unmute.addEventListener("click", () => {
  els.video.muted = !els.video.muted;
  els.unmute.textContent = els.video.muted ? "Unmute" : "Mute";
  els.video.play().catch(() => {});
});
els.reconnect.addEventListener("click", () => {
  if (hlsState) return;
  attempt = 0;
  viewer.reconnects += 1;
  connect();
});
window.addEventListener("pagehide", () => closeSession());

els.name.textContent = streamName;
document.title = `Watch ${streamName} · webrtc-cast`;
setInterval(tick, STATS_INTERVAL_MS);
setInterval(checkNode, NODE_CHECK_MS);
viewer.transport = "webrtc";
if (forceHls) {
  switchToHls("LL-HLS requested (mode=hls).");
} else {
  fallbackTimer = setTimeout(() => {
    if (viewer.state !== "playing") switchToHls(`WebRTC did not connect within ${FALLBACK_MS / 1000} s.`);
  }, FALLBACK_MS);
  connect();
}
