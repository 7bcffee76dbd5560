"""WHIP (RFC 9725) and WHEP conformance, black-box over HTTP with real aiortc offers.

Each test names its check from ../shared/conformance.md (W.. for WHIP, E.. for WHEP).
Checks that do not apply, and why:
- W15: the server is full ICE, never ice-lite (asserted in test_w15_full_ice).
- W16: simulcast is not negotiated yet (issue 3); the answer carries no simulcast lines (asserted).
- W24-W26: ICE restart is not supported; W28 requires 422 for it (asserted), W27 that the session survives.
- W29: trickle is supported, so the "neither" case does not arise.
- W35/W36/E06: no STUN/TURN servers are configured, so no ice-server Link headers are sent (asserted absent).
- W38: redirects belong to the relay tree (issue 4); nothing redirects today.
- W40: WHIP advertises no extension. E07: WHEP advertises the layer and server-sent-events extensions
  (test_whep_layer_and_sse_extensions.py).
- W41: TLS is terminated by the operator's reverse proxy or `serve --tls-cert/--tls-key` (test_w41_tls).
"""

from __future__ import annotations

import re
import ssl

import aiohttp
import pytest

from tests.conftest import make_offer, run_node
from webrtc_cast.sdp import description as sdp

SDP = {"Content-Type": "application/sdp"}
TRICKLE = "application/trickle-ice-sdpfrag"


async def post(http: aiohttp.ClientSession, url: str, body: str, headers: dict | None = None):
    async with http.post(url, data=body, headers={**SDP, **(headers or {})}) as r:
        return r.status, await r.text(), r.headers


def sections(answer: str) -> list[str]:
    return ["m=" + part for part in answer.split("\r\nm=")[1:]]


async def publish_offer(kinds=("audio", "video"), direction="sendonly") -> str:
    pc, offer = await make_offer(direction, kinds)
    await pc.close()
    return offer


async def view_offer(direction="recvonly") -> str:
    pc, offer = await make_offer(direction)
    await pc.close()
    return offer


# --- 1.1 session setup ---------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["whip", "whep"])
async def test_w01_w02_e01_post_creates_session(node_url, http, role):
    base, node = node_url
    offer = await (publish_offer() if role == "whip" else view_offer())
    status, body, headers = await post(http, f"{base}/{role}/s1", offer)
    assert status == 201
    assert headers["Content-Type"].startswith("application/sdp")
    answer = sdp.parse(body)
    assert len(answer.media) == 2
    assert headers["Location"].startswith(f"/{role}/s1/")
    # the Location resolves against the request URL to a live session resource
    async with http.get(base + headers["Location"]) as r:
        assert r.status == 204


@pytest.mark.parametrize("ctype", ["text/plain", "application/json"])
async def test_w03_wrong_content_type_is_415(node_url, http, ctype):
    base, _ = node_url
    offer = await publish_offer()
    async with http.post(f"{base}/whip/s", data=offer, headers={"Content-Type": ctype}) as r:
        assert r.status == 415


@pytest.mark.parametrize("body", ["v=0", "garbage", "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", ""])
async def test_w04_malformed_sdp_is_400(node_url, http, body):
    base, _ = node_url
    status, text, _ = await post(http, f"{base}/whip/s", body)
    assert status == 400, text


@pytest.mark.parametrize("direction", ["sendonly", "sendrecv"])
async def test_w05_answer_is_recvonly(node_url, http, direction):
    base, _ = node_url
    status, body, _ = await post(http, f"{base}/whip/s", await publish_offer(direction=direction))
    assert status == 201
    for m in sections(body):
        assert "a=recvonly" in m.split("\r\n")


@pytest.mark.parametrize("direction", ["recvonly", "sendrecv"])
async def test_e01_answer_is_sendonly(node_url, http, direction):
    base, _ = node_url
    status, body, _ = await post(http, f"{base}/whep/s", await view_offer(direction))
    assert status == 201
    for m in sections(body):
        assert "a=sendonly" in m.split("\r\n")


async def test_w06_full_candidate_list_in_first_section(node_url, http):
    base, _ = node_url
    _, body, _ = await post(http, f"{base}/whip/s", await publish_offer())
    first = sections(body)[0]
    cands = [ln for ln in first.split("\r\n") if ln.startswith("a=candidate:")]
    assert cands and all(" 127.0.0.1 " in c for c in cands)  # exactly the configured --ice-host
    assert "a=end-of-candidates" in first


@pytest.mark.parametrize("role", ["whip", "whep"])
async def test_w07_get_endpoint_and_session_is_2xx_without_body(node_url, http, role):
    base, _ = node_url
    async with http.get(f"{base}/{role}/s") as r:
        assert 200 <= r.status < 300 and await r.read() == b""
    offer = await (publish_offer() if role == "whip" else view_offer())
    _, _, headers = await post(http, f"{base}/{role}/s", offer)
    async with http.get(base + headers["Location"]) as r:
        assert 200 <= r.status < 300 and await r.read() == b""


async def test_w08_session_urls_are_unguessable(node_url, http):
    base, _ = node_url
    ids = []
    for _ in range(2):
        _, _, headers = await post(http, f"{base}/whep/s", await view_offer())
        ids.append(headers["Location"].rsplit("/", 1)[1])
    assert ids[0] != ids[1]
    assert all(len(i) >= 22 for i in ids)  # 22 base64url characters = 128 random bits


async def test_w09_post_flood_is_rate_limited(http):
    async with run_node(http_requests_per_second=2.0, http_burst=3) as (base, _):
        statuses = []
        for _ in range(8):
            async with http.post(f"{base}/whip/s", data="garbage", headers=SDP) as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert int(r.headers["Retry-After"]) >= 1
        assert statuses[:3] == [400, 400, 400]
        assert 429 in statuses


# --- 1.2 SDP constraints -------------------------------------------------------------------------------
async def test_w10_w11_bundle_and_rtcp_mux_only(node_url, http):
    base, _ = node_url
    _, body, _ = await post(http, f"{base}/whip/s", await publish_offer())
    answer = sdp.parse(body)
    mids = [m.mid for m in answer.media]
    assert answer.session_attr("group") == "BUNDLE " + " ".join(mids)
    assert len({(m.attr("ice-ufrag"), m.attr("ice-pwd"), m.attr("fingerprint")) for m in answer.media}) == 1
    for m in answer.media:
        names = [k for k, _ in m.attributes]
        assert "rtcp-mux" in names and "rtcp-mux-only" in names


async def test_w12_two_video_tracks_are_refused(node_url, http):
    base, _ = node_url
    status, text, _ = await post(http, f"{base}/whip/s", await publish_offer(kinds=("video", "video")))
    assert status in (400, 422), text


async def test_w13_unsupported_codec_refuses_the_whole_post(node_url, http):
    base, _ = node_url
    offer = await publish_offer(kinds=("video",))
    # offer only a codec this server does not forward (AV1)
    lines = [re.sub(r"^(m=video \d+ \S+) .*$", r"\1 45", ln) for ln in offer.strip().split("\r\n")]
    lines.append("a=rtpmap:45 AV1/90000")
    status, text, _ = await post(http, f"{base}/whip/s", "\r\n".join(lines) + "\r\n")
    assert status == 422 and "codec" in text


@pytest.mark.parametrize(
    ("offered", "answered"), [("actpass", "passive"), ("active", "passive"), ("passive", "active")]
)
async def test_w14_dtls_setup(node_url, http, offered, answered):
    base, _ = node_url
    offer = (await publish_offer()).replace("a=setup:actpass", f"a=setup:{offered}")
    status, body, _ = await post(http, f"{base}/whip/s", offer)
    assert status == 201
    assert all(f"a=setup:{answered}" in m for m in sections(body))


async def test_w15_full_ice(node_url, http):
    base, _ = node_url
    _, body, _ = await post(http, f"{base}/whip/s", await publish_offer())
    assert "a=ice-lite" not in body


async def test_w16_no_simulcast_lines_without_simulcast_support(node_url, http):
    base, _ = node_url
    _, body, _ = await post(http, f"{base}/whip/s", await publish_offer())
    assert "a=simulcast" not in body and "a=rid" not in body


@pytest.mark.parametrize("kinds", [("audio",), ("video",), ("audio", "video")])
async def test_w17_audio_only_video_only_and_both(node_url, http, kinds):
    base, _ = node_url
    status, body, _ = await post(http, f"{base}/whip/s-{len(kinds)}-{kinds[0]}", await publish_offer(kinds=kinds))
    assert status == 201, body
    assert [m.kind for m in sdp.parse(body).media] == list(kinds)


# --- 1.3 ETag / PATCH ----------------------------------------------------------------------------------
async def _session(http, base, role="whip"):
    offer = await (publish_offer() if role == "whip" else view_offer())
    status, body, headers = await post(http, f"{base}/{role}/p", offer)
    assert status == 201
    ufrag = re.search(r"a=ice-ufrag:(\S+)", offer).group(1)
    pwd = re.search(r"a=ice-pwd:(\S+)", offer).group(1)
    return base + headers["Location"], headers["ETag"], ufrag, pwd


def fragment(ufrag: str, pwd: str, candidate: str = "1 1 udp 2122260223 127.0.0.1 50000 typ host") -> str:
    return (
        f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"
        f"a=candidate:{candidate}\r\n"
    )


async def test_w18_etag_is_strong(node_url, http):
    base, _ = node_url
    _, etag, _, _ = await _session(http, base)
    assert re.fullmatch(r'"[^"]+"', etag)


@pytest.mark.parametrize("role", ["whip", "whep"])
async def test_w19_to_w23_e04_trickle(node_url, http, role):
    base, _ = node_url
    url, etag, ufrag, pwd = await _session(http, base, role)
    frag = fragment(ufrag, pwd)
    async with http.patch(url, data=frag, headers={"Content-Type": "text/plain", "If-Match": etag}) as r:
        assert r.status == 415  # W19
    async with http.patch(url, data="not a fragment", headers={"Content-Type": TRICKLE, "If-Match": etag}) as r:
        assert r.status == 400  # W19 malformed
    async with http.patch(url, data=frag, headers={"Content-Type": TRICKLE}) as r:
        assert r.status == 428  # W21
    async with http.patch(url, data=frag, headers={"Content-Type": TRICKLE, "If-Match": '"bogus"'}) as r:
        assert r.status == 412  # W22
    async with http.patch(url, data=frag, headers={"Content-Type": TRICKLE, "If-Match": etag}) as r:
        assert r.status == 204 and await r.read() == b"" and "ETag" not in r.headers  # W20
    for odd in ("1 1 udp 2122260223 foo.invalid 50000 typ host", "1 1 udp 2122260223 abc.local 5000 typ host",
                "1 1 tcp 2122260223 127.0.0.1 9 typ host tcptype active"):
        async with http.patch(url, data=fragment(ufrag, pwd, odd),
                              headers={"Content-Type": TRICKLE, "If-Match": etag}) as r:
            assert r.status == 204  # W23: ignored silently


async def test_w27_w28_ice_restart_is_refused_and_session_survives(node_url, http):
    base, _ = node_url
    url, etag, ufrag, pwd = await _session(http, base)
    restart = fragment("newufrag", "newpasswordnewpassword12")
    async with http.patch(url, data=restart, headers={"Content-Type": TRICKLE, "If-Match": "*"}) as r:
        assert r.status == 422  # W28
    async with http.patch(url, data=fragment(ufrag, pwd), headers={"Content-Type": TRICKLE, "If-Match": etag}) as r:
        assert r.status == 204  # W27: old ETag still valid
    async with http.delete(url) as r:
        assert r.status == 200


# --- 1.4 teardown, CORS -------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["whip", "whep"])
async def test_w30_w31_delete(node_url, http, role):
    base, node = node_url
    url, _, ufrag, pwd = await _session(http, base, role)
    assert len(node.sessions) == 1
    async with http.delete(url, headers={"If-Match": '"bogus"'}) as r:
        assert r.status == 200  # W31: entity-tags ignored
    assert node.sessions == {}
    async with http.delete(url) as r:
        assert r.status == 404
    async with http.patch(url, data=fragment(ufrag, pwd), headers={"Content-Type": TRICKLE, "If-Match": "*"}) as r:
        assert r.status == 404


@pytest.mark.parametrize("role", ["whip", "whep"])
async def test_w32_w33_w34_w36_e05_cors_preflight(http, role):
    async with run_node(publish_tokens=["secret"]) as (base, _):
        headers = {
            "Origin": "http://example.test",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        async with http.options(f"{base}/{role}/s", headers=headers) as r:
            assert 200 <= r.status < 300  # W32: no credentials needed
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
            allowed = r.headers["Access-Control-Allow-Headers"].lower()
            assert "authorization" in allowed and "content-type" in allowed
            assert r.headers["Accept-Post"] == "application/sdp"  # W33
            assert "Link" not in r.headers  # W36
        offer = await (publish_offer() if role == "whip" else view_offer())
        async with http.post(f"{base}/{role}/s", data=offer,
                             headers={**SDP, "Authorization": "Bearer secret", "Origin": "http://example.test"}) as r:
            exposed = r.headers["Access-Control-Expose-Headers"]
            assert all(h in exposed for h in ("Location", "ETag", "Link"))  # W34
            links = r.headers.getall("Link", [])
            assert not any("ice-server" in link for link in links)  # W35/E06: no STUN/TURN configured
            if role == "whip":
                assert links == []  # W40: no WHIP extension
            else:  # E07/E11/E18: the two WHEP extensions, under the urn:ietf:params:whep:ext prefix
                rels = sorted(re.search(r'rel="([^"]+)"', link).group(1) for link in links)
                prefix = "urn:ietf:params:whep:ext:core:"
                assert rels == [prefix + "layer", prefix + "server-sent-events"]


# --- 1.5 auth, load ------------------------------------------------------------------------------------
async def test_w37_bearer_auth(http):
    async with run_node(publish_tokens=["pub-token"], view_tokens=["view-token"]) as (base, node):
        offer = await publish_offer()
        status, _, headers = await post(http, f"{base}/whip/s", offer)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        status, _, headers = await post(http, f"{base}/whip/s", offer, {"Authorization": "Bearer wrong"})
        assert status == 401 and "invalid_token" in headers["WWW-Authenticate"]
        status, _, headers = await post(http, f"{base}/whip/s", offer, {"Authorization": "Basic abc"})
        assert status == 401
        status, _, _ = await post(http, f"{base}/whip/s", offer, {"Authorization": "Bearer view-token"})
        assert status == 403  # a valid token without the right to publish
        status, _, headers = await post(http, f"{base}/whip/s", offer, {"Authorization": "Bearer pub-token"})
        assert status == 201
        url = base + headers["Location"]
        async with http.delete(url) as r:
            assert r.status == 401  # the session's token is needed to end it
        async with http.delete(url, headers={"Authorization": "Bearer pub-token"}) as r:
            assert r.status == 200
        status, _, _ = await post(http, f"{base}/whep/s", await view_offer(), {"Authorization": "Bearer view-token"})
        assert status == 201


async def test_w39_full_node_answers_503_with_retry_after(http):
    async with run_node(max_viewers=1) as (base, _):
        status, _, _ = await post(http, f"{base}/whep/s", await view_offer())
        assert status == 201
        status, body, headers = await post(http, f"{base}/whep/s", await view_offer())
        assert status == 503 and int(headers["Retry-After"]) > 0
        assert '"fallback": "hls"' in body


async def test_e02_answer_is_one_media_stream(node_url, http):
    base, _ = node_url
    _, body, _ = await post(http, f"{base}/whep/s", await view_offer())
    msids = {m.attr("msid").split()[0] for m in sdp.parse(body).media}
    assert len(msids) == 1


async def test_e03_not_live_is_409_when_live_is_required(http):
    async with run_node(require_live_for_whep=True) as (base, _):
        status, _, headers = await post(http, f"{base}/whep/s", await view_offer())
        assert status == 409 and int(headers["Retry-After"]) > 0


@pytest.mark.parametrize("name", ["a/b", "x" * 65, "bad name", "é"])
async def test_stream_names_are_validated(node_url, http, name):
    base, _ = node_url
    status, _, _ = await post(http, f"{base}/whip/{name}", await publish_offer())
    assert 400 <= status < 500


async def test_oversized_body_is_413(node_url, http):
    base, _ = node_url
    status, _, _ = await post(http, f"{base}/whip/s", "v=0\r\n" + "a=x\r\n" * 40000)
    assert status == 413


async def test_w41_tls(http, tmp_path):
    from tests.tls import self_signed

    cert, key = self_signed(tmp_path)
    async with run_node(tls_cert=str(cert), tls_key=str(key)) as (base, _):
        https = base.replace("http://", "https://")
        ctx = ssl.create_default_context(cafile=str(cert))
        async with http.post(f"{https}/whip/s", data=await publish_offer(), headers=SDP, ssl=ctx) as r:
            status, body = r.status, await r.text()
        assert status == 201 and body.startswith("v=0")
