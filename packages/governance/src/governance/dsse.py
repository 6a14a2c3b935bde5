"""DSSE (Dead Simple Signing Envelope) v1 with Ed25519, the envelope in-toto attestations travel in.

Reference: https://github.com/secure-systems-lab/dsse/blob/master/protocol.md and envelope.md. The signature is
over the Pre-Authentication Encoding ``PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``
(LEN = ASCII decimal byte count), never over the JSON of the envelope, so re-serialising the envelope cannot
change what was signed. The envelope is ``{"payload": b64(body), "payloadType": type, "signatures": [{"keyid",
"sig": b64(signature)}]}`` with standard base64.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from governance.sign import key_id, verify_signature

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"


def pae(payload_type: str, body: bytes) -> bytes:
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def sign_envelope(body: bytes, key: Ed25519PrivateKey, payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> dict[str, Any]:
    sig = key.sign(pae(payload_type, body))
    return {"payloadType": payload_type, "payload": base64.b64encode(body).decode("ascii"),
            "signatures": [{"keyid": key_id(key), "sig": base64.b64encode(sig).decode("ascii")}]}


def is_envelope(doc: Any) -> bool:
    return isinstance(doc, Mapping) and {"payload", "payloadType", "signatures"} <= set(doc)


def open_envelope(env: Mapping[str, Any], key: Ed25519PublicKey | None) -> tuple[bytes, list[str]]:
    """``(payload bytes, problems)``. With ``key``, one signature must verify over the PAE; without, none is checked
    and the payload is returned for structural checks only."""
    problems: list[str] = []
    try:
        body = base64.b64decode(env["payload"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        return b"", ["DSSE payload is not valid base64"]
    sigs = env.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        return body, ["DSSE envelope has no signatures"]
    if key is not None:
        message = pae(str(env["payloadType"]), body)
        good = False
        for s in sigs:
            try:
                raw = base64.b64decode(s["sig"], validate=True)
            except (binascii.Error, TypeError, ValueError, KeyError):
                continue
            good = good or verify_signature(key, message, raw)
        if not good:
            problems.append(f"DSSE signature does not verify with public key {key_id(key)[:16]}...")
    return body, problems


def load_statement(body: bytes) -> tuple[dict[str, Any] | None, str | None]:
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"payload is not JSON: {exc}"
    return (doc, None) if isinstance(doc, dict) else (None, "payload is not a JSON object")
