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
