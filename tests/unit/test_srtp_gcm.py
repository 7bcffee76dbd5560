"""Our RFC 7714 AES-GCM protector against libsrtp's unprotect (the reference every browser pairs with)."""

from __future__ import annotations

import os

import pylibsrtp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webrtc_cast.rtp.header import build
from webrtc_cast.rtp.srtp_gcm import GcmProtector

PROFILES = [(16, pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM), (32, pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM)]


def receiver(key: bytes, salt: bytes, profile: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=key + salt, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile)
    policy.window_size = 1024
    policy.allow_repeat_tx = True
    return pylibsrtp.Session(policy)


@pytest.mark.parametrize(("key_len", "profile"), PROFILES)
def test_libsrtp_decrypts_what_we_protect(key_len, profile):
    key, salt = os.urandom(key_len), os.urandom(12)
    ours, theirs = GcmProtector(key, salt), receiver(key, salt, profile)
    for seq in range(100, 140):
        plain = build(111, seq, seq * 960, 0x1234ABCD, os.urandom(50 + seq), marker=seq % 3 == 0)
        assert theirs.unprotect(ours.protect(plain)) == plain


@pytest.mark.parametrize(("key_len", "profile"), PROFILES)
def test_header_extensions_are_authenticated_not_encrypted(key_len, profile):
    """Forwarded video carries an abs-send-time extension: libsrtp must see it as part of the header (AAD)."""
    key, salt = os.urandom(key_len), os.urandom(12)
    ours, theirs = GcmProtector(key, salt), receiver(key, salt, profile)
    ext = bytes.fromhex("bede0001") + bytes([(3 << 4) | 2, 0x12, 0x34, 0x56])
    for seq in range(7, 27):
        base = build(96, seq, seq * 3000, 0xCAFE0001, os.urandom(900), marker=seq % 5 == 0)
        plain = bytes([base[0] | 0x10]) + base[1:12] + ext + base[12:]
        sealed = ours.protect(plain)
        assert sealed[:20] == plain[:20]  # header and extension travel in the clear
        assert theirs.unprotect(sealed) == plain
        # the hot path's split form gives the same bytes
        split = GcmProtector(key, salt).protect_parts(plain[:20], memoryview(plain)[20:], seq, 0xCAFE0001)
        assert plain[:20] + split == sealed


@pytest.mark.parametrize(("key_len", "profile"), PROFILES)
def test_sequence_wrap_advances_the_rollover_counter(key_len, profile):
    key, salt = os.urandom(key_len), os.urandom(12)
    ours, theirs = GcmProtector(key, salt), receiver(key, salt, profile)
    seq = 65000
    for _ in range(1200):  # crosses 65535 -> 0 with ROC 0 -> 1; 65300 is "lost"
        if seq != 65300:
            plain = build(96, seq, 0, 7, b"x" * 20)
            assert theirs.unprotect(ours.protect(plain)) == plain
        seq = (seq + 1) & 0xFFFF
    old = build(96, 65300, 0, 7, b"repair")  # its repair after the wrap still uses ROC 0
    assert theirs.unprotect(ours.protect(old)) == old


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.lists(st.tuples(st.integers(1, 500), st.binary(min_size=1, max_size=300)), min_size=1, max_size=40),
)
def test_any_forward_sequence_round_trips(start, steps):
    key, salt = os.urandom(16), os.urandom(12)
    ours = GcmProtector(key, salt)
    theirs = receiver(key, salt, pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM)
    seq = start
    for step, body in steps:
        seq = (seq + step) & 0xFFFF
        plain = build(100, seq, 1, 99, body)
        assert theirs.unprotect(ours.protect(plain)) == plain


def test_bad_key_sizes_are_refused():
    with pytest.raises(ValueError):
        GcmProtector(os.urandom(20), os.urandom(12))


@pytest.mark.parametrize("gso", [True, False])
def test_batch_sink_sends_every_packet_as_its_own_datagram(gso, monkeypatch):
    """The ingest-run path: one UDP GSO send per run of equal sizes must reach the viewer as the same separate,
    decryptable datagrams as packet-by-packet sends (sizes differ by one byte as FU-A splits do, the frame's last
    packet is short)."""
    import socket

    from webrtc_cast.sfu_tree.aiortc_glue import srtp_send as aiortc_glue  # _gso lives there

    monkeypatch.setattr(aiortc_glue, "_gso", [gso])
    key, salt = os.urandom(16), os.urandom(12)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        batch = aiortc_glue._make_gcm_batch_sink(GcmProtector(key, salt), tx, rx.getsockname())
        theirs = receiver(key, salt, pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM)
        sizes = [1101, 1101, 1100, 1100, 1100, 1100, 1101, 400] + [1000] * 70  # 70: more than one GSO send holds
        payloads = [os.urandom(n) for n in sizes]
        ext = bytes.fromhex("bede0001") + bytes([(3 << 4) | 2, 1, 2, 3])
        items = [(memoryview(p), 0x90, 96 | (0x80 if i == 7 else 0), 500 + i, 9000) for i, p in enumerate(payloads)]
        assert batch(items, 0xCAFE, ext) == len(items)
        for i, p in enumerate(payloads):
            plain = theirs.unprotect(rx.recv(4096))
            assert plain[2:4] == (500 + i).to_bytes(2, "big") and plain[12:20] == ext and plain[20:] == p
            assert bool(plain[1] & 0x80) == (i == 7)
        assert aiortc_glue._gso[0] == gso  # the kernel took the GSO sends (no silent fallback)
    finally:
        rx.close()
        tx.close()
