// Parse HLS playlists with the npm package hls-parser in strict mode (an independent parser: a malformed or
// inconsistent playlist throws). Reads a JSON array of playlist texts on stdin; writes one JSON summary per
// playlist ({ok, error} or the fields the tests check) as a JSON array on stdout.
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
      variants: pl.variants.map((v) => ({
        uri: v.uri, bandwidth: v.bandwidth, averageBandwidth: v.averageBandwidth, codecs: v.codecs,
        resolution: v.resolution, frameRate: v.frameRate, audio: v.audio.map((a) => a.groupId),
      })),
    };
  }
  const segments = pl.segments.map((s) => ({
    uri: s.uri, mediaSequenceNumber: s.mediaSequenceNumber, duration: s.duration,
    parts: (s.parts || []).map((p) => ({ uri: p.uri, duration: p.duration, independent: !!p.independent })),
    programDateTime: s.programDateTime ? s.programDateTime.toISOString() : null,
  }));
  return {
    ok: true,
    master: false,
    targetDuration: pl.targetDuration,
    mediaSequenceBase: pl.mediaSequenceBase,
    partTargetDuration: pl.partTargetDuration,
    lowLatency: pl.lowLatencyCompatibility || null,
    skip: pl.skip || 0,
    prefetchSegments: (pl.prefetchSegments || []).length,
    renditionReports: (pl.renditionReports || []).map((r) => ({ uri: r.uri, lastMSN: r.lastMSN, lastPart: r.lastPart })),
    segments,
  };
}

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const texts = JSON.parse(input);
  process.stdout.write(JSON.stringify(texts.map(summary)));
});
