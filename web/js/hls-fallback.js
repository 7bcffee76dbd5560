// hls-fallback.js — LL-HLS playback with hls.js (served from node_modules at /static/vendor/hls.min.js).
//
// startHls(video, stream, {onStatus}) plays /hls/<stream>/index.m3u8 (relative to the page, so a CDN in front
// of the page serves the playlists too). The live latency shown is hls.js's own figure (hls.latency: the live
// edge of the playlist minus the playback position); the PDT figure (now minus hls.playingDate) is kept beside it.
// For tests: window.castHls = {hls, state, latencyMs, latencies[], pdtLatencyMs, stalls, error}.

const HLS_JS_URL = "/static/vendor/hls.min.js";
const SAMPLE_MS = 500;

let loading = null;

function loadHlsJs() {
  if (window.Hls) return Promise.resolve(window.Hls);
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = HLS_JS_URL;
      script.onload = () => (window.Hls ? resolve(window.Hls) : reject(new Error("hls.js did not load")));
      script.onerror = () => reject(new Error(`cannot load ${HLS_JS_URL} (run npm ci)`));
      document.head.appendChild(script);
    });
  }
  return loading;
}

export async function startHls(video, stream, { onStatus = () => {} } = {}) {
  const state = {
    hls: null, state: "loading", latencyMs: null, latencies: [], pdtLatencyMs: null, stalls: 0, error: null,
  };
  window.castHls = state;
  const src = `/hls/${encodeURIComponent(stream)}/index.m3u8`;
  // A clear answer when the broadcast has no HLS (VP8 publisher: 409 "HLS unavailable")
  const probe = await fetch(src, { cache: "no-store" }).catch(() => null);
  if (probe && probe.status === 409) {
    state.state = "unavailable";
    state.error = (await probe.text()).trim();
    onStatus("unavailable", state.error);
    return state;
  }
  let Hls;
  try {
    Hls = await loadHlsJs();
  } catch (err) {
    state.state = "error";
    state.error = String(err);
    onStatus("error", state.error);
    return state;
  }
  if (!Hls.isSupported()) {
    if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = src; // Safari: native LL-HLS
      state.state = "native";
      onStatus("playing", "Playing over native HLS.");
      return state;
    }
    state.state = "error";
    state.error = "this browser has no Media Source Extensions";
    onStatus("error", state.error);
    return state;
  }
  // maxLiveSyncPlaybackRate: play up to 25 % fast to get back to the target latency after a hiccup (a 4 s
  // stall is caught up in ~16 s; at 1.1 it took ~40 s, a minute of viewing several seconds behind).
  // ?hlsdebug on the page URL turns on hls.js's own log (the browser test keeps it when a run stalls).
  // enableWorker: false: the fMP4 parts are only passed through (no TS demux), and in hls.js's worker the parsed
  // result and the flush of a part come back as two messages. A back-buffer SourceBuffer.remove() completing between
  // them (BUFFER_FLUSHED -> fragment-tracker detectEvictedFragments) drops the still-unbuffered fragment and clears
  // its elementaryStreams, so updateLevelTiming reports "Found no media", marks the segment a gap and playback
  // stalls. On the main thread both run in one task and the remove's 'updateend' cannot fall between.
  const hls = new Hls({
    lowLatencyMode: true,
    enableWorker: false,
    backBufferLength: 30,
    maxLiveSyncPlaybackRate: 1.25,
    debug: new URLSearchParams(location.search).has("hlsdebug"),
  });
  state.hls = hls;
  let started = false;
  hls.on(Hls.Events.ERROR, (_, data) => {
    if (data.details === Hls.ErrorDetails.BUFFER_STALLED_ERROR && started) state.stalls += 1;
    if (!data.fatal) {
      console.warn(`hls.js: ${data.details}`, data.frag ? `${data.frag.type} sn ${data.frag.sn} part ${data.part ? data.part.index : "-"}` : "");
      return;
    }
    state.error = `${data.type}: ${data.details}`;
    if (data.type === Hls.ErrorTypes.NETWORK_ERROR) {
      onStatus("retrying", `HLS network error (${data.details}), retrying…`);
      setTimeout(() => hls.loadSource(src), 2000);
    } else if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
      hls.recoverMediaError();
    } else {
      state.state = "error";
      onStatus("error", `HLS failed: ${state.error}`);
    }
  });
  video.addEventListener("playing", () => {
    started = true;
    state.state = "playing";
    onStatus("playing", `Playing ${stream} over LL-HLS.`);
  });
  hls.loadSource(src);
  hls.attachMedia(video);
  hls.on(Hls.Events.MANIFEST_PARSED, () => video.play().catch(() => {}));
  setInterval(() => {
    if (video.paused || !hls.latency) return;
    const date = hls.playingDate;
    state.pdtLatencyMs = date ? Date.now() - date.getTime() : null;
    state.latencyMs = Math.round(hls.latency * 1000);
    state.latencies.push(state.latencyMs);
    if (state.latencies.length > 600) state.latencies.shift();
  }, SAMPLE_MS);
  return state;
}

export function hlsStats(state) {
  if (!state || !state.hls) return [];
  const hls = state.hls;
  const level = hls.levels && hls.currentLevel >= 0 ? hls.levels[hls.currentLevel] : null;
  return [
    ["transport", "LL-HLS (hls.js)"],
    ["live latency", state.latencyMs == null ? "–" : `${(state.latencyMs / 1000).toFixed(2)} s`],
    ["latency (PDT)", state.pdtLatencyMs == null ? "–" : `${(state.pdtLatencyMs / 1000).toFixed(2)} s`],
    ["resolution", level ? `${level.width}×${level.height}` : "–"],
    ["stalls", String(state.stalls)],
  ];
}
