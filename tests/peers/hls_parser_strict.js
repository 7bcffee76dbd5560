// Parse HLS playlists with the npm package hls-parser in strict mode (an independent parser: a malformed or
// inconsistent playlist throws). Reads a JSON array of playlist texts on stdin; writes one JSON summary per
// playlist ({ok, error}, or the fields tests/integration/test_hls.py checks) as a JSON array on stdout.
"use strict";
const path = require("path");
const HLS = require(path.join(__dirname, "..", "..", "node_modules", "hls-parser"));

HLS.setOptions({ strictMode: true });

function summary(text) {
  let pl;
  try {
    pl = HLS.parse(text);
  } catch (err) {
    return { ok: false, error: String(err && err.message ? err.message : err) };
  }
  if (pl.isMasterPlaylist) {
    return {
      ok: true,
      master: true,
      variants: pl.variants.map((v) => ({ codecs: v.codecs, audio: v.audio.map((a) => a.groupId) })),
    };
  }
  return {
    ok: true,
    master: false,
    partTargetDuration: pl.partTargetDuration,
    renditionReports: pl.renditionReports.map((r) => ({ uri: r.uri, lastMSN: r.lastMSN, lastPart: r.lastPart })),
    segments: pl.segments.map((s) => ({ parts: s.parts.map((p) => ({ uri: p.uri, duration: p.duration })) })),
  };
}

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const texts = JSON.parse(input);
  process.stdout.write(JSON.stringify(texts.map(summary)));
});
