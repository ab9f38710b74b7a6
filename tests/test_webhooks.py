"""webhooks.py: the signature against every published vector, and the route."""

from __future__ import annotations

import json
import re

import pytest

from sponsord.config import Secret
from sponsord.webhooks import sign, signature_valid

from .conftest import fixture_bytes, fixture_json


def secrets(*values: str) -> list[Secret]:
    return [Secret(v) for v in values]


def test_rfc2202_hmac_md5_vectors() -> None:
    """The primitive matches RFC 2202 test cases 1-4."""
    cases = fixture_json("rfc2202_hmac_md5_vectors.json")["cases"]
    data_of = {3: b"\xdd" * 50, 4: b"\xcd" * 50}
    for case in cases:
        key = bytes.fromhex(case["key_hex"]) if "key_hex" in case else case["key"].encode()
        data = data_of.get(case["test_case"], case["data"].encode())
        assert sign(key, data) == case["digest"]


def test_derived_patreon_vectors_and_negatives() -> None:
    """The derived Patreon vectors verify; a trailing space or re-serialised JSON does not."""
    doc = fixture_json("patreon_hmac_md5_derived_vectors.json")
    for v in doc["vectors"]:
        body = v["body_utf8"].encode()
        assert signature_valid(secrets(v["secret"]), body, v["expected_X-Patreon-Signature"])
    first = doc["vectors"][0]
    body = first["body_utf8"].encode()
    sig = first["expected_X-Patreon-Signature"]
    assert not signature_valid(secrets(first["secret"]), body + b" ", sig)
    reserialised = json.dumps(json.loads(body)).encode()
    assert reserialised != body
    assert not signature_valid(secrets(first["secret"]), reserialised, sig)
    # Hex case is not significant (the contract's policy).
    assert signature_valid(secrets(first["secret"]), body, sig.upper())


def test_patreon_api_ts_vectors() -> None:
    """The patreon-api.ts vectors: valid, invalid (last byte off), and the posts body."""
    text = fixture_bytes("patreon-api-ts_verify_test_signature_vectors.txt").decode()
    valid = re.search(r"valid signature:\s+([0-9a-f]{32})", text)
    invalid = re.search(r"invalid signature:\s+([0-9a-f]{32})", text)
    post = re.search(r"X-Patreon-Signature:\s+([0-9a-f]{32})", text)
    assert valid and invalid and post
    assert signature_valid(secrets("secret"), b"testing", valid.group(1))
    assert not signature_valid(secrets("secret"), b"testing", invalid.group(1))
    assert signature_valid(secrets("secret"), b'{"data":{"type":"post"}}', post.group(1))


def test_mxpv_patreon_go_17670_byte_body() -> None:
    """The 17,670-byte pledges:create body verifies with its published secret and signature."""
    body = fixture_bytes("mxpv-patreon-go_webhook_test_pledges-create_v1_body.json")
    assert len(body) == 17670
    text = fixture_bytes("mxpv-patreon-go_webhook_test_signature_vector.txt").decode()
    secret = re.search(r"secret: (\S+)", text)
    expected = re.search(r"expected X-Patreon-Signature: ([0-9a-f]{32})", text)
    assert secret and expected
    assert signature_valid(secrets(secret.group(1)), body, expected.group(1))
    assert not signature_valid(secrets(secret.group(1)), body[:-1], expected.group(1))
    assert not signature_valid(secrets("wrong"), body, expected.group(1))


def test_previous_secret_accepted_during_rotation() -> None:
    """Either the current or the previous secret verifies; neither → invalid."""
    sig = sign("old", b"x")
    assert signature_valid(secrets("new", "old"), b"x", sig)
    assert not signature_valid(secrets("new"), b"x", sig)


@pytest.mark.parametrize("header", [None, "", "zz", "é" * 32, "0" * 32, " " * 4])
def test_missing_or_garbled_headers_are_invalid(header: str | None) -> None:
    """No header, empty, non-hex, non-ASCII or all-zero signatures are all invalid."""
    assert not signature_valid(secrets("s"), b"body", header)
