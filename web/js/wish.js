// wish.js — a small WHIP (RFC 9725) / WHEP client for webrtc-cast.
//
// Non-trickle: the offer is sent once ICE gathering completes (capped at ICE_GATHER_CAP_MS, after which
// whatever candidates exist are sent). The session URL comes from the Location header, resolved against the
// POST URL; session.close() DELETEs it and closes the peer connection.

export const ICE_GATHER_CAP_MS = 2000;

/** An HTTP or protocol failure of a WHIP/WHEP exchange. `status` is 0 for network errors. */
export class WishError extends Error {
  constructor(message, { status = 0, body = "", url = "", fallback = null } = {}) {
    super(message);
    this.name = "WishError";
    this.status = status;
    this.body = body;
    this.url = url;
    this.fallback = fallback; // e.g. "hls" when the server answers 503 {"error":"full","fallback":"hls"}
  }
}

/** Resolves once ICE gathering is complete, or after capMs — whichever comes first. */
export function waitIceGathering(pc, capMs = ICE_GATHER_CAP_MS) {
  if (pc.iceGatheringState === "complete") return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (complete) => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", onChange);
      resolve(complete);
    };
    const onChange = () => {
      if (pc.iceGatheringState === "complete") done(true);
    };
    const timer = setTimeout(() => done(false), capMs);
    pc.addEventListener("icegatheringstatechange", onChange);
  });
}

function absoluteUrl(url) {
  return new URL(url, globalThis.location ? globalThis.location.href : undefined).href;
}

function shorten(text, max = 300) {
  const t = (text || "").trim();
  return t.length > max ? `${t.slice(0, max)}…` : t;
}

function parseFallback(body) {
  try {
    const parsed = JSON.parse(body);
    return parsed && typeof parsed.fallback === "string" ? parsed.fallback : null;
  } catch {
    return null;
  }
}

class Session {
  constructor(pc, url, etag, kind) {
    this.pc = pc;
    this.url = url; // absolute session URL (from Location), or null if the server sent none
    this.etag = etag;
    this.kind = kind; // "whip" | "whep"
    this.closed = false;
  }

  /** DELETE the session resource (best effort) and close the peer connection. Idempotent. */
  async close() {
    if (this.closed) return;
    this.closed = true;
    try {
      this.pc.close();
    } catch {
      /* already closed */
    }
    if (!this.url) return;
    try {
      await fetch(this.url, { method: "DELETE", keepalive: true });
    } catch {
      /* the server may already be gone; nothing useful to do */
    }
  }
}

/** POST the local offer of `pc`, apply the answer, and return a Session. Closes `pc` on failure. */
async function exchange(kind, url, pc, token) {
  const postUrl = absoluteUrl(url);
  try {
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    await waitIceGathering(pc);
    const headers = { "Content-Type": "application/sdp" };
    if (token) headers.Authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetch(postUrl, { method: "POST", headers, body: pc.localDescription.sdp });
    } catch (err) {
      throw new WishError(`${kind.toUpperCase()} POST ${postUrl} failed: ${err.message}`, { url: postUrl });
    }
    const body = await response.text();
    if (response.status !== 201 && response.status !== 200) {
      throw new WishError(`${kind.toUpperCase()} ${response.status} ${response.statusText}: ${shorten(body)}`, {
        status: response.status,
        body,
        url: postUrl,
        fallback: parseFallback(body),
      });
    }
    const location = response.headers.get("Location");
    // response.url: where the POST ended up after a 307 from the origin to a relay (relative Locations are its)
    const sessionUrl = location ? new URL(location, response.url || postUrl).href : null;
    const session = new Session(pc, sessionUrl, response.headers.get("ETag"), kind);
    try {
      await pc.setRemoteDescription({ type: "answer", sdp: body });
    } catch (err) {
      await session.close(); // release the server side too
      throw new WishError(`${kind.toUpperCase()} answer rejected: ${err.message}`, {
        status: response.status,
        body,
        url: postUrl,
      });
    }
    return session;
  } catch (err) {
    try {
      pc.close();
    } catch {
      /* ignore */
    }
    throw err;
  }
}

const SIMULCAST_ENCODINGS = [
  { rid: "l", scaleResolutionDownBy: 4, maxBitrate: 200_000 },
  { rid: "m", scaleResolutionDownBy: 2, maxBitrate: 700_000 },
  { rid: "h", maxBitrate: 2_000_000 },
];

/**
 * Publish `stream` over WHIP to `url`. Returns the Session (session.pc is the RTCPeerConnection).
 * options: token (Bearer), simulcast (three encodings l/m/h on the video track), rtcConfig.
 */
export async function whipPublish(url, stream, { token = null, simulcast = false, rtcConfig = {} } = {}) {
  const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", ...rtcConfig });
  for (const track of stream.getTracks()) {
    const init = { direction: "sendonly", streams: [stream] };
    if (simulcast && track.kind === "video") init.sendEncodings = SIMULCAST_ENCODINGS.map((e) => ({ ...e }));
    pc.addTransceiver(track, init);
  }
  return exchange("whip", url, pc, token);
}

/**
 * Play a stream over WHEP from `url`. Returns {pc, stream, session}; `stream` is a MediaStream that receives
 * the remote audio and video tracks as they arrive.
 */
export async function whepPlay(url, { token = null, rtcConfig = {} } = {}) {
  const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", ...rtcConfig });
  const stream = new MediaStream();
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addEventListener("track", (event) => {
    if (!stream.getTracks().includes(event.track)) stream.addTrack(event.track);
  });
  const session = await exchange("whep", url, pc, token);
  return { pc, stream, session };
}

/**
 * The stream name and token of the current page: `/publish/{stream}` or `/watch/{stream}` (prefix names the
 * first path segment), falling back to `?stream=` and then "default"; the token comes from `?token=`.
 */
export function pageTarget(prefix, loc = globalThis.location) {
  const params = new URLSearchParams(loc.search);
  const segments = loc.pathname.split("/").filter(Boolean);
  let stream = null;
  const at = segments.indexOf(prefix);
  if (at >= 0 && segments.length > at + 1) stream = decodeURIComponent(segments[at + 1]);
  return { stream: stream || params.get("stream") || "default", token: params.get("token"), params };
}
