"""Bearer-token checks (signaling.auth)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webrtc_cast.access.tokens import MAX_TOKEN_LENGTH, AuthError, check_bearer

PUBLISH = ["pub-secret", "pub-other"]
WATCH = ["watch-secret"]


def test_no_tokens_configured_means_open() -> None:
    assert check_bearer(None, [], WATCH) is None
    assert check_bearer("Bearer anything", [], []) is None
    assert check_bearer("garbage", [], []) is None


@pytest.mark.parametrize(
    "header", ["Bearer pub-secret", "bearer pub-secret", "BEARER  pub-secret ", " Bearer pub-other"]
)
def test_valid_token(header: str) -> None:
    assert check_bearer(header, PUBLISH, WATCH) in PUBLISH


@pytest.mark.parametrize("header", [None, ""])
def test_missing_header_is_401(header: str | None) -> None:
    with pytest.raises(AuthError) as exc:
        check_bearer(header, PUBLISH, WATCH)
    assert exc.value.status == 401
    assert exc.value.challenge.startswith("Bearer")
    assert "error=" not in exc.value.challenge


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer ",
        "Token pub-secret",
        "pub-secret",
        "Bearer " + "x" * (MAX_TOKEN_LENGTH + 1),
    ],
)
def test_malformed_header_is_401_invalid_request(header: str) -> None:
    with pytest.raises(AuthError) as exc:
        check_bearer(header, PUBLISH, WATCH)
    assert exc.value.status == 401
    assert 'error="invalid_request"' in exc.value.challenge


def test_unknown_token_is_401_invalid_token() -> None:
    with pytest.raises(AuthError) as exc:
        check_bearer("Bearer nope", PUBLISH, WATCH)
    assert exc.value.status == 401
    assert 'error="invalid_token"' in exc.value.challenge
    assert str(exc.value) == exc.value.message


def test_token_of_the_other_role_is_403() -> None:
    with pytest.raises(AuthError) as exc:
        check_bearer("Bearer watch-secret", PUBLISH, WATCH)
    assert exc.value.status == 403
    assert "insufficient_scope" in exc.value.challenge


def test_token_in_both_roles_is_accepted() -> None:
    assert check_bearer("Bearer shared", ["shared"], ["shared"]) == "shared"


def test_prefix_or_case_variant_of_a_token_is_not_accepted() -> None:
    for token in ("pub-secre", "pub-secret2", "PUB-SECRET"):
        with pytest.raises(AuthError):
            check_bearer(f"Bearer {token}", PUBLISH, WATCH)


def test_non_ascii_token_is_rejected_not_crashing() -> None:
    with pytest.raises(AuthError) as exc:
        check_bearer("Bearer jeton-\u00e9t\u00e9", PUBLISH, WATCH)
    assert exc.value.status == 401


@given(st.one_of(st.none(), st.text(max_size=200)))
def test_fuzz_only_auth_errors(header: str | None) -> None:
    try:
        token = check_bearer(header, PUBLISH, WATCH)
    except AuthError as exc:
        assert exc.status in (401, 403)
    else:
        assert token in PUBLISH
