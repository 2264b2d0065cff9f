"""Signing keys: the Ed25519 keys that sign access tokens, their rotation and their publication.

One key is *current* (it signs new tokens). Rotation makes a new key current and *retires* the
previous one, which stays published, so that verifiers still accept what it signed, until every
token it could have signed is dead: an access token lives at most `access_token_max_ttl` and may
be refreshed within `refresh_window` of its issue, so a key retired at R is published until
R + both. After that it is *gone*: dropped from the published set, and deleted from the store at
the next rotation.

Private keys are stored sealed (AES-256-GCM under a key derived from the pepper with HKDF-SHA256,
the kid as associated data, so a sealed key moved to another row does not open). They are opened
in memory for the current key only, and never logged, returned by an RPC or put in an event.

Every process holds the key set in a `SigningKeys` and reloads it when the change log carries a
`signing_key.rotated` event, so that processes sharing a database agree on the current key.
"""

from __future__ import annotations

import base64
import enum
import json
import math
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from authority.domain.access import Access
from authority.domain.clock import Clock
from authority.domain.events import SYSTEM, Event, EventKind, Initiator
from authority.domain.policy import Caller
from authority.domain.ports import Hold, Store, Transaction

# The only algorithm this service signs with or accepts (never taken from a token's header).
ALGORITHM = "EdDSA"
# RFC 9068: the media type of a JWT access token.
ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 (a media type, not a password)
# HKDF's info: binds the derived key to this one use of the pepper (the token hashes use the
# pepper as an HMAC key; the two never meet).
_SEAL_INFO = b"authority.v1 signing-key seal"
_NONCE_BYTES = 12


class KeyState(enum.StrEnum):
    CURRENT = "current"  # signs new tokens; published
    RETIRED = "retired"  # signs nothing; published until what it signed is dead
    GONE = "gone"  # no longer published


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    """A signing key as the store holds it: the public key raw, the private key sealed."""

    kid: str
    public_key: bytes
    sealed_private_key: bytes = field(repr=False)
    created_at: datetime
    retired_at: datetime | None


@dataclass(frozen=True, slots=True)
class KeyLifetimes:
    """How long the tokens a key signs can be accepted: what a retired key is published for."""

    access_token_max_ttl: timedelta
    refresh_window: timedelta

    @property
    def published_after_retirement(self) -> timedelta:
        return self.access_token_max_ttl + self.refresh_window


@dataclass(frozen=True, slots=True)
class KeyView:
    """A key as `authority keys list` shows it: never its private part."""

    kid: str
    state: KeyState
    created_at: datetime
    retired_at: datetime | None
    # When it leaves the published set (None: current, published for as long as it is).
    published_until: datetime | None


@dataclass(frozen=True, slots=True)
class PublicJwk:
    """One key of the published JWK set (RFC 7517, RFC 8037 for OKP/Ed25519)."""

    kid: str
    x: str
    kty: str = "OKP"
    crv: str = "Ed25519"
    alg: str = ALGORITHM
    use: str = "sig"

    def as_dict(self) -> dict[str, str]:
        return {
            "kty": self.kty,
            "crv": self.crv,
            "x": self.x,
            "kid": self.kid,
            "alg": self.alg,
            "use": self.use,
        }


@dataclass(frozen=True, slots=True)
class RotatedKey:
    kid: str
    retired_kid: str | None


@dataclass(frozen=True, slots=True)
class VerifiedJws:
    """A compact JWS whose signature a published key checked: that key's id, the header and
    the payload (a JSON object each), read once."""

    kid: str
    header: dict[str, Any]
    claims: dict[str, Any]


class SignatureRefused(Exception):
    """A presented JWT whose signature this service does not vouch for. `why` is one of
    `malformed`, `algorithm`, `unknown_kid`, `signature` (for the caller's reason)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url_decode(segment: str) -> bytes:
    """The bytes of a canonical unpadded base64url segment; ValueError for anything else (as
    PyJWT, which refuses other spellings of the same bytes)."""
    decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if _b64url(decoded) != segment:
        raise ValueError("not canonical base64url")
    return decoded


def _json_object(segment: str) -> dict[str, Any]:
    """A base64url segment holding a JSON object; ValueError if it does not."""
    try:
        value = json.loads(_b64url_decode(segment))
    except RecursionError:  # deeply nested arrays: not ours, and not worth a traceback
        raise ValueError("nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def new_kid() -> str:
    """A random key id (128 bits, base64url): says nothing about the key or when it was made."""
    return _b64url(secrets.token_bytes(16))


class KeySealer:
    """Seals and opens private keys with AES-256-GCM under a key derived from the pepper."""

    def __init__(self, pepper: bytes) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_INFO).derive(pepper)
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "KeySealer(...)"

    def seal(self, kid: str, private_key: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, private_key, kid.encode("ascii"))

    def open(self, kid: str, sealed: bytes) -> bytes:
        """The raw private key; cryptography's InvalidTag when it was sealed under another
        pepper, for another kid, or altered."""
        nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        return self._aead.decrypt(nonce, ciphertext, kid.encode("ascii"))


def new_signing_key(sealer: KeySealer, now: datetime) -> SigningKeyRecord:
    """A fresh Ed25519 key, current from `now`, its private part sealed."""
    private_key = Ed25519PrivateKey.generate()
    kid = new_kid()
    raw_private = private_key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    raw_public = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return SigningKeyRecord(kid, raw_public, sealer.seal(kid, raw_private), now, None)


def published_until(record: SigningKeyRecord, lifetimes: KeyLifetimes) -> datetime | None:
    """When a key leaves the published set; None while it is current."""
    if record.retired_at is None:
        return None
    return record.retired_at + lifetimes.published_after_retirement


def state_of(record: SigningKeyRecord, now: datetime, lifetimes: KeyLifetimes) -> KeyState:
    until = published_until(record, lifetimes)
    if until is None:
        return KeyState.CURRENT
    return KeyState.RETIRED if now < until else KeyState.GONE


def current_of(records: Sequence[SigningKeyRecord]) -> SigningKeyRecord | None:
    """The key that signs (rotation keeps at most one unretired; the newest wins regardless)."""
    live = [record for record in records if record.retired_at is None]
    return max(live, key=lambda record: record.created_at) if live else None


def rotation_due(current: SigningKeyRecord | None, now: datetime, max_age: timedelta) -> bool:
    """Whether the scheduled rotation should make a new key: none yet, or the current one is
    at least `max_age` old."""
    return current is None or now - current.created_at >= max_age


def jwks_json(keys: Sequence[PublicJwk]) -> str:
    """The JWK set as served at a JWKS URL: `{"keys": [...]}`."""
    return json.dumps({"keys": [key.as_dict() for key in keys]}, separators=(",", ":"))


class KeyRing:
    """One snapshot of the key set: the published public keys and the current private key."""

    def __init__(
        self,
        records: Sequence[SigningKeyRecord],
        sealer: KeySealer,
        lifetimes: KeyLifetimes,
    ) -> None:
        current = current_of(records)
        retired = [record for record in records if record is not current]
        # The current key first, then the most recently retired (a clock may stand still).
        retired.sort(key=lambda record: (record.retired_at or record.created_at, record.created_at))
        self._records = ([current] if current is not None else []) + retired[::-1]
        self._lifetimes = lifetimes
        self._public = {
            record.kid: Ed25519PublicKey.from_public_bytes(record.public_key)
            for record in self._records
        }
        # When each key leaves the published set, as a timestamp: `publishes` is a lookup.
        self._published_until = {
            record.kid: until.timestamp() if until is not None else math.inf
            for record in self._records
            for until in (published_until(record, lifetimes),)
        }
        self.current_kid = current.kid if current is not None else None
        self._private: Ed25519PrivateKey | None = None
        if current is not None:
            raw = sealer.open(current.kid, current.sealed_private_key)
            self._private = Ed25519PrivateKey.from_private_bytes(raw)

    def __repr__(self) -> str:
        return f"KeyRing(current={self.current_kid!r}, keys={len(self._records)})"

    def views(self, now: datetime) -> list[KeyView]:
        """Every key held, newest first, with its state at `now`."""
        return [
            KeyView(
                record.kid,
                state_of(record, now, self._lifetimes),
                record.created_at,
                record.retired_at,
                published_until(record, self._lifetimes),
            )
            for record in self._records
        ]

    def published(self, now: datetime) -> list[PublicJwk]:
        """The keys a verifier should accept at `now`: the current one first."""
        return [
            PublicJwk(record.kid, _b64url(record.public_key))
            for record in self._records
            if state_of(record, now, self._lifetimes) is not KeyState.GONE
        ]

    def publishes(self, kid: str, now_ts: float) -> bool:
        """Whether the key `kid` is published at `now_ts` (what a verified token's key must
        still be, every time it is accepted)."""
        return now_ts < self._published_until.get(kid, -math.inf)

    def sign(self, claims: Mapping[str, Any]) -> str:
        """A compact JWS of `claims` signed by the current key (kid and typ in its header)."""
        if self._private is None or self.current_kid is None:
            raise LookupError("no current signing key")
        return jwt.encode(
            dict(claims),
            self._private,
            algorithm=ALGORITHM,
            headers={"kid": self.current_kid, "typ": ACCESS_TOKEN_TYPE},
        )

    def verify(self, token: str, now: datetime) -> VerifiedJws:
        """The header and claims of `token` if a key published at `now` signed it with EdDSA;
        else SignatureRefused. Only the signature: the caller checks the claims (exp against
        its clock, iss, aud...).

        The token is parsed once, here (PyJWT would parse it once for the kid and again to
        verify); the signature is checked by `cryptography`, over the exact bytes signed. The
        unit tests hold this to PyJWT's verdicts on forged and tampered tokens."""
        parts = token.split(".")
        if len(parts) != 3 or not token.isascii():
            raise SignatureRefused("malformed")
        header_segment, payload_segment, signature_segment = parts
        try:
            header = _json_object(header_segment)
        except ValueError:  # binascii.Error and JSONDecodeError are ValueErrors
            raise SignatureRefused("malformed") from None
        if header.get("alg") != ALGORITHM:
            raise SignatureRefused("algorithm")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise SignatureRefused("malformed")
        if kid is None or not self.publishes(kid, now.timestamp()):
            raise SignatureRefused("unknown_kid")
        try:
            signature = _b64url_decode(signature_segment)
        except ValueError:  # binascii.Error among them
            raise SignatureRefused("malformed") from None
        signed = token[: len(header_segment) + 1 + len(payload_segment)].encode("ascii")
        try:
            self._public[kid].verify(signature, signed)
        except InvalidSignature:
            raise SignatureRefused("signature") from None
        try:
            claims = _json_object(payload_segment)
        except ValueError:
            raise SignatureRefused("malformed") from None
        return VerifiedJws(kid, header, claims)


class SigningKeys:
    """This process's key set and the use cases that change it (each one unit of work under
    the global lock, recording `signing_key.rotated`). Thread-safe."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        sealer: KeySealer,
        lifetimes: KeyLifetimes,
        access: Access,
    ) -> None:
        self._store = store
        self._clock = clock
        self._sealer = sealer
        self._lifetimes = lifetimes
        self._access = access
        self._ring = KeyRing((), sealer, lifetimes)
        # Reloads one at a time, so that a slow read cannot overwrite a newer one's ring.
        self._reloading = threading.Lock()

    @property
    def ring(self) -> KeyRing:
        """The snapshot in use (replaced whole on reload: safe to read from any thread)."""
        return self._ring

    def reload(self) -> KeyRing:
        """Read the key set from the store (after a rotation here or elsewhere)."""
        with self._reloading:
            records = self._store.run(lambda tx: tx.signing_keys())
            self._ring = KeyRing(records, self._sealer, self._lifetimes)
            return self._ring

    def published(self) -> list[PublicJwk]:
        return self._ring.published(self._clock())

    def views(self) -> list[KeyView]:
        return self.reload().views(self._clock())

    def ensure_current(self) -> str:
        """At start: the current key's kid, creating the installation's first key if there is
        none (once, however many processes start at the same moment)."""
        self._store.run(
            lambda tx: self._rotate(tx, SYSTEM, lambda current: current is None, locked=False)
        )
        kid = self.reload().current_kid
        assert kid is not None
        return kid

    def rotate(self, caller: Caller) -> RotatedKey:
        """Admin/RotateSigningKey: global administrators only."""

        def work(tx: Transaction) -> RotatedKey | None:
            self._access.authorize_global(tx, caller, "rotate the signing key", Hold.CHANGE)
            return self._rotate(tx, Initiator.of(caller), lambda current: True, locked=True)

        rotated = self._store.run(work)
        assert rotated is not None
        self.reload()
        return rotated

    def rotate_on_host(self) -> RotatedKey:
        """`authority keys rotate`: database access is the authority, as for bootstrap."""
        rotated = self._store.run(
            lambda tx: self._rotate(tx, SYSTEM, lambda current: True, locked=False)
        )
        assert rotated is not None
        self.reload()
        return rotated

    def rotate_if_due(self, max_age: timedelta) -> int:
        """The scheduled rotation: 1 when this call rotated, 0 when the key is young enough
        (or another process rotated first)."""
        now = self._clock()
        rotated = self._store.run(
            lambda tx: self._rotate(
                tx, SYSTEM, lambda current: rotation_due(current, now, max_age), locked=False
            )
        )
        if rotated is None:
            return 0
        self.reload()
        return 1

    def _rotate(
        self,
        tx: Transaction,
        initiator: Initiator,
        wanted: Callable[[SigningKeyRecord | None], bool],
        locked: bool,
    ) -> RotatedKey | None:
        """Make a new current key if `wanted(current)`, checked again under the global lock:
        of processes deciding at the same moment, one rotates and the others see its key."""
        if not locked and not wanted(current_of(tx.signing_keys())):
            return None  # the common case, without serialising on the lock
        tx.lock_global()
        records = tx.signing_keys()
        current = current_of(records)
        if not wanted(current):
            return None
        now = self._clock()
        gone = [
            record.kid
            for record in records
            if state_of(record, now, self._lifetimes) is KeyState.GONE
        ]
        if gone:
            tx.delete_signing_keys(gone)
        if current is not None:
            tx.retire_signing_key(current.kid, now)
        record = new_signing_key(self._sealer, now)
        tx.add_signing_key(record)
        retired = current.kid if current is not None else None
        tx.record(
            Event(
                EventKind.SIGNING_KEY_ROTATED,
                now,
                initiator,
                None,
                record.kid,
                details={"retired_kid": retired or ""},
            )
        )
        return RotatedKey(record.kid, retired)
