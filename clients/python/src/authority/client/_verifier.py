"""Offline verification of access tokens: no call to the authority per token.

A service that receives access tokens checks them itself: the signature against the published
keys (GetSigningKeys, cached; fetched again for a key id it does not know, at most once per
`refetch_interval`, so that forged tokens cannot make it hammer the authority), then the
claims (issuer, audience, expiry, scopes). The answer is Validate's: a `ValidationResult`,
refusals included.

What a signature cannot say is that the key the token was exchanged for (its `parent`) has
been revoked since. Without more, a token outlives its key by up to its lifetime (15 minutes
by default). Given `watch_organizations` and a `watch_token` allowed to follow their events,
`start()` follows WatchEvents for each of them (from the oldest event kept, so revocations
before the start count too, and resuming where it stopped after a break) and `verify()`
refuses the tokens of a revoked key within a second of the revocation. Tokens of any other
organisation are then refused (UNKNOWN): this verifier could not vouch for them.

Needs PyJWT and cryptography: `pip install 'authority-client[verify]'`.
"""

from __future__ import annotations

import base64
import heapq
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Self

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from authority.client._client import TokenAuthorityClient
from authority.client._errors import (
    AuthorityClientError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    error_from_rpc,
)
from authority.client._models import Reason, ValidationResult
from authority.client._scopes import ScopeMatcher, is_permission, normalize
from authority.v1 import token_authority_pb2 as pb
from authority.v1 import token_authority_pb2_grpc

if TYPE_CHECKING:
    from jwt import PyJWK

# The algorithms a published key may have and a token may name (never `none`, never HS*:
# a shared-secret algorithm would let anyone holding the public key sign). The service signs
# with EdDSA (Ed25519).
ALGORITHMS = ("EdDSA", "ES256")
# RFC 9068: the media type of a JWT access token.
ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 (a media type, not a password)
# Longer values are not access tokens of the service (it refuses them unread too).
MAX_ACCESS_TOKEN_LENGTH = 4096
DEFAULT_ISSUER = "token-authority"
# The service's default AUTHORITY_ACCESS_TOKEN_MAX_TTL_SECONDS.
DEFAULT_MAX_TOKEN_LIFETIME = 900.0
# A broken stream is opened again after this, doubling up to the maximum.
RECONNECT_FIRST_SECONDS = 0.1
RECONNECT_MAX_SECONDS = 2.0
# The watch resumed from a position past the service's audit retention.
_POSITION_EXPIRED = "POSITION_EXPIRED"
# A watch refused for good (the token, its rights, the organisation), unlike an outage.
_WATCH_REFUSED = (Unauthenticated, PermissionDenied, NotFound, InvalidArgument, FailedPrecondition)
_BASE64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_REQUIRED = {
    "iss": str,
    "sub": str,
    "aud": str,
    "exp": int,
    "iat": int,
    "jti": str,
    "client_id": str,
    "scope": str,
    "org": str,
    "parent": str,
    "refresh_until": int,
}


def _import_jwt() -> ModuleType:
    """PyJWT with cryptography (for EdDSA), or an ImportError saying what to install."""
    try:
        import jwt
        from jwt.algorithms import has_crypto
    except ImportError as error:
        raise ImportError(
            "OfflineVerifier needs PyJWT and cryptography: pip install 'authority-client[verify]'"
        ) from error
    if not has_crypto:
        raise ImportError(
            "OfflineVerifier needs cryptography for EdDSA: pip install 'authority-client[verify]'"
        )
    return jwt


def _looks_like_jwt(value: str) -> bool:
    """Three base64url parts, bounded: worth reading (anything else is MALFORMED)."""
    return (
        len(value) <= MAX_ACCESS_TOKEN_LENGTH
        and value.count(".") == 2
        and all(part and _BASE64URL.issuperset(part) for part in value.split("."))
    )


def _b64url_decode(segment: str) -> bytes:
    """The bytes of a canonical unpadded base64url segment; ValueError otherwise (PyJWT too
    refuses other spellings of the same bytes)."""
    decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if base64.urlsafe_b64encode(decoded).rstrip(b"=").decode("ascii") != segment:
        raise ValueError("not canonical base64url")
    return decoded


def _json_object(segment: str) -> dict[str, Any]:
    """A base64url segment holding a JSON object; ValueError otherwise."""
    try:
        value = json.loads(_b64url_decode(segment))
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class _Claims:
    """The claims of a token whose signature verified (see the service's exchange.py)."""

    issuer: str
    audience: str
    subject: str
    expires_at: int
    token_id: str
    scopes: tuple[str, ...]
    matcher: ScopeMatcher
    organization: str
    parent: str

    @classmethod
    def read(cls, payload: Mapping[str, Any]) -> _Claims | None:
        """The claims if each one is there with its type and they agree; else None."""
        for name, kind in _REQUIRED.items():
            value = payload.get(name)
            # bool is an int to Python, never to the service.
            if not isinstance(value, kind) or isinstance(value, bool):
                return None
        parent = payload["parent"]
        if not parent or payload["client_id"] != parent or not payload["jti"]:
            return None
        if payload["exp"] <= payload["iat"]:
            return None
        scopes = tuple(payload["scope"].split())
        subject = payload["sub"]
        return cls(
            issuer=payload["iss"],
            audience=payload["aud"],
            # As Validate shows it: empty for an organisation key (`key:<key id>`).
            subject="" if subject == f"key:{parent}" else subject,
            expires_at=payload["exp"],
            token_id=payload["jti"],
            scopes=scopes,
            matcher=ScopeMatcher.compile(scopes),
            organization=payload["org"],
            parent=parent,
        )


class _SigningKeys:
    """The published keys by kid: fetched on first use, again after `max_age`, and for an
    unknown kid at most once per `refetch_interval`. Thread-safe; one fetch at a time."""

    def __init__(
        self,
        fetch: Callable[[], str],
        jwt: ModuleType,
        clock: Callable[[], float],
        refetch_interval: float,
        max_age: float,
    ) -> None:
        self._fetch = fetch
        self._jwt = jwt
        self._clock = clock
        self._refetch_interval = refetch_interval
        self._max_age = max_age
        self._keys: dict[str, PyJWK] | None = None
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._fetching = threading.Lock()
        self.fetches = 0

    def key(self, kid: str) -> PyJWK | None:
        """The key published as `kid`, or None. Raises the client error when it has to ask
        the service and cannot (with no key set yet, or for a kid it does not know)."""
        keys, now = self._keys, self._clock()
        if keys is not None and now < self._fetched_at + self._max_age:
            found = keys.get(kid)
            if found is not None or now < self._attempted_at + self._refetch_interval:
                return found
        with self._fetching:
            keys, now = self._keys, self._clock()
            if keys is not None:
                current = now < self._fetched_at + self._max_age
                if (kid in keys and current) or now < self._attempted_at + self._refetch_interval:
                    return keys.get(kid)  # fetched meanwhile, or asked too recently
            self._attempted_at = now
            try:
                self.refresh()
            except AuthorityClientError:
                if keys is None or kid not in keys:
                    raise
            return (self._keys or {}).get(kid)

    def refresh(self) -> None:
        """Fetch the set now."""
        self.fetches += 1
        document = self._fetch()
        self._keys = self._parse(document)
        self._fetched_at = self._clock()

    def _parse(self, document: str) -> dict[str, PyJWK]:
        """The signing keys of an allowed algorithm; any other entry is left out."""
        keys: dict[str, PyJWK] = {}
        for entry in json.loads(document).get("keys", []):
            if not isinstance(entry, dict):
                continue
            kid, algorithm = entry.get("kid"), entry.get("alg")
            if not isinstance(kid, str) or algorithm not in ALGORITHMS:
                continue
            if entry.get("use", "sig") != "sig":
                continue
            try:
                keys[kid] = self._jwt.PyJWK(entry)
            except (self._jwt.PyJWKError, self._jwt.InvalidKeyError):
                continue
        return keys


@dataclass(frozen=True, slots=True)
class _Dead:
    """A parent key the watch saw go: refused as `reason` from `since` on."""

    reason: Reason
    since: float
    forget_at: float


class _DeadParents:
    """Keys revoked or expired, each kept until every access token it could have parented has
    expired (`horizon` after the event): bounded by what happens in that window. Written by
    the watch threads, read by any thread."""

    def __init__(self, horizon: float) -> None:
        self._horizon = horizon
        self._dead: dict[str, _Dead] = {}
        self._forget: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._dead)

    def refusal(self, parent: str, now: float) -> Reason | None:
        dead = self._dead.get(parent)
        if dead is None or now < dead.since:
            return None
        return dead.reason

    def record(self, event: pb.TokenEvent, now: float) -> None:
        """Take in one event of the watch (issued and expiring ones change nothing)."""
        occurred_at = _seconds(event.occurred_at)
        forget_at = occurred_at + self._horizon
        with self._lock:
            self._forget_past(now)
            if forget_at <= now:
                return  # every token it could have parented has expired
            known = self._dead.get(event.token_id)
            if event.kind == pb.TOKEN_EVENT_KIND_REVOKED:
                self._put(event.token_id, _Dead(Reason.REVOKED, -math.inf, forget_at))
            elif known is not None and known.reason is Reason.REVOKED:
                return  # revocation is final
            elif event.kind == pb.TOKEN_EVENT_KIND_EXPIRED:
                since = _seconds(event.expires_at) if event.HasField("expires_at") else occurred_at
                self._put(event.token_id, _Dead(Reason.EXPIRED, since, forget_at))
            elif event.kind == pb.TOKEN_EVENT_KIND_CHANGED:
                # A new expiry: tokens exchanged before the change may outlive it (those after
                # are capped by the service), until `forget_at` at the latest.
                if event.HasField("expires_at") and _seconds(event.expires_at) < forget_at:
                    since = _seconds(event.expires_at)
                    self._put(event.token_id, _Dead(Reason.EXPIRED, since, forget_at))
                elif known is not None:
                    del self._dead[event.token_id]

    def _put(self, token_id: str, dead: _Dead) -> None:
        self._dead[token_id] = dead
        heapq.heappush(self._forget, (dead.forget_at, token_id))

    def _forget_past(self, now: float) -> None:
        while self._forget and self._forget[0][0] <= now:
            forget_at, token_id = heapq.heappop(self._forget)
            dead = self._dead.get(token_id)
            if dead is not None and dead.forget_at <= forget_at:
                del self._dead[token_id]


def _seconds(value: Timestamp) -> float:
    """A protobuf Timestamp as seconds since the epoch."""
    return value.seconds + value.nanos / 1e9


class _Follower:
    """One organisation's WatchEvents on a thread of its own: from sequence 0, resumed after
    the last event seen whenever the stream breaks, until `stop()`."""

    def __init__(
        self,
        organization: str,
        stub: token_authority_pb2_grpc.TokenAuthorityStub,
        metadata: tuple[tuple[str, str], ...],
        dead: _DeadParents,
        clock: Callable[[], float],
    ) -> None:
        self.organization = organization
        self._stub = stub
        self._metadata = metadata
        self._dead = dead
        self._clock = clock
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self.last_sequence = 0
        # The current stream is open / has sent its CAUGHT_UP (the history is in).
        self._open = False
        self._caught_up = False
        self.error: AuthorityClientError | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"authority-watch-{organization}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def connected(self) -> bool:
        return self._open

    @property
    def ready(self) -> bool:
        """The stream is open and the service said every event in its log has been sent."""
        return self._open and self._caught_up

    def _run(self) -> None:
        delay = RECONNECT_FIRST_SECONDS
        while not self._stopped.is_set():
            opened = time.monotonic()
            try:
                self._follow()
            except grpc.RpcError as failure:
                if self._stopped.is_set():
                    return
                error = error_from_rpc(failure)
                if error.reason == _POSITION_EXPIRED:
                    # The log no longer holds our position: what it dropped is older than
                    # the retention, far older than any live access token. Start over.
                    self.last_sequence = 0
                    continue
                self.error = error
            finally:
                self._open = self._caught_up = False
            if time.monotonic() - opened >= RECONNECT_MAX_SECONDS:
                delay = RECONNECT_FIRST_SECONDS  # it had been working: try again soon
            self._stopped.wait(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    def _follow(self) -> None:
        request = pb.WatchEventsRequest(
            organization=self.organization, after_sequence=self.last_sequence, mark_caught_up=True
        )
        with self._lock:
            if self._stopped.is_set():
                return
            self._call = self._stub.WatchEvents(request, metadata=self._metadata)
        self._open = True
        for event in self._call:
            self.error = None
            if event.kind == pb.TOKEN_EVENT_KIND_CAUGHT_UP:
                self._caught_up = True
                continue
            self._dead.record(event, self._clock())
            self.last_sequence = event.sequence


class OfflineVerifier:
    """Verifies the service's access tokens with its published keys; thread-safe.

    `target` (with `credentials` for TLS) or `channel` say where the authority is. `issuer`
    must match the service's AUTHORITY_ISSUER; `audience`, when given, the `aud` the tokens
    were exchanged for (None: any). `clock` (seconds since the epoch) judges expiry, with
    `leeway` seconds of tolerance. `max_token_lifetime` is the service's
    AUTHORITY_ACCESS_TOKEN_MAX_TTL_SECONDS: how long a revoked key is remembered.

        with OfflineVerifier("authority:50051", watch_organizations=["acme"],
                             watch_token=watcher_token) as verifier:
            if not verifier.verify(presented, "download").valid:
                refuse()
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        issuer: str = DEFAULT_ISSUER,
        audience: str | None = None,
        watch_organizations: Sequence[str] = (),
        watch_token: str | None = None,
        clock: Callable[[], float] = time.time,
        leeway: float = 0.0,
        max_token_lifetime: float = DEFAULT_MAX_TOKEN_LIFETIME,
        refetch_interval: float = 5.0,
        keys_max_age: float = 3600.0,
        cache_size: int = 1024,
        timeout: float = 5.0,
        ready_timeout: float = 10.0,
    ) -> None:
        if (target is None) == (channel is None):
            raise TypeError("give the authority's target or a channel to it: one of the two")
        if isinstance(watch_organizations, str):
            raise TypeError("watch_organizations must be a sequence of names, not a str")
        if watch_organizations and not watch_token:
            raise TypeError("watching organisations needs a watch_token allowed to follow them")
        self._jwt = _import_jwt()
        self._owns_channel = channel is None
        if channel is None:
            channel = (
                grpc.secure_channel(target or "", credentials)
                if credentials is not None
                else grpc.insecure_channel(target or "")
            )
        self._target = target
        self._channel = channel
        self._client = TokenAuthorityClient("", channel=channel, timeout=timeout)
        self._issuer = issuer
        self._audience = audience
        self._clock = clock
        self._leeway = leeway
        self._keys = _SigningKeys(
            self._client.signing_keys, self._jwt, clock, refetch_interval, keys_max_age
        )
        self._watched = frozenset(watch_organizations)
        self._dead = _DeadParents(max_token_lifetime + leeway)
        stub = token_authority_pb2_grpc.TokenAuthorityStub(channel)
        metadata = (("authorization", f"Bearer {watch_token}"),)
        self._followers = [
            _Follower(organization, stub, metadata, self._dead, clock)
            for organization in sorted(self._watched)
        ]
        self._ready_timeout = ready_timeout
        self._started = False
        self._cache_size = cache_size
        self._verified: OrderedDict[str, _Claims] = OrderedDict()
        self._cache_lock = threading.Lock()

    def __repr__(self) -> str:
        watched = sorted(self._watched)
        return f"OfflineVerifier(target={self._target!r}, watch_organizations={watched!r})"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Fetch the keys and, when watching, follow the organisations' events; return once
        each stream has delivered its history. Raises the client error of a refused watch
        (Unauthenticated, PermissionDenied, NotFound) or of an unreachable service."""
        if self._started:
            return
        self._started = True
        try:
            self._keys.refresh()
            for follower in self._followers:
                follower.start()
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop watching and close the channel if the verifier opened it."""
        for follower in self._followers:
            follower.stop()
        for follower in self._followers:
            follower.join(timeout=5.0)
        if self._owns_channel:
            self._channel.close()

    def _wait_ready(self) -> None:
        """Until every stream has caught up; raise a refusal at once, an outage at the end."""
        deadline = time.monotonic() + self._ready_timeout
        while waiting := [follower for follower in self._followers if not follower.ready]:
            errors = [follower.error for follower in waiting if follower.error is not None]
            refused = [error for error in errors if isinstance(error, _WATCH_REFUSED)]
            if refused:
                raise refused[0]
            if time.monotonic() >= deadline:
                if errors:
                    raise errors[0]
                names = ", ".join(follower.organization for follower in waiting)
                raise TimeoutError(f"the events of {names} not in after {self._ready_timeout} s")
            time.sleep(0.02)

    @property
    def watching(self) -> bool:
        """Whether every watched organisation's stream is open now (for a health check:
        while one is not, revocations there reach this verifier late)."""
        return self._started and all(follower.connected for follower in self._followers)

    @property
    def tracked_parents(self) -> int:
        """How many revoked or expired keys are remembered (bounded: see `max_token_lifetime`)."""
        return len(self._dead)

    @property
    def key_fetches(self) -> int:
        """How many times the key set was fetched."""
        return self._keys.fetches

    def verify(self, access_token: str, permission: str = "") -> ValidationResult:
        """Is `access_token` one of the service's, alive and, when `permission` is given,
        does it hold it? Answered as Validate answers (without the key's properties).

        Raises the client error only when the key set cannot be fetched (none yet, or one
        is needed for a new key id); RuntimeError when it should watch and was not started.
        """
        if self._followers and not self._started:
            raise RuntimeError("start() the verifier first: it watches for revocations")
        claims = self._claims(access_token)
        if isinstance(claims, Reason):
            return ValidationResult(valid=False, reason=claims)
        if claims.issuer != self._issuer:
            return ValidationResult(valid=False, reason=Reason.UNKNOWN)
        if self._audience is not None and claims.audience != self._audience:
            return ValidationResult(valid=False, reason=Reason.UNKNOWN)
        if self._watched and claims.organization not in self._watched:
            return ValidationResult(valid=False, reason=Reason.UNKNOWN)
        now = self._clock()
        reason = self._dead.refusal(claims.parent, now) or Reason.UNSPECIFIED
        if reason is Reason.UNSPECIFIED and now >= claims.expires_at + self._leeway:
            reason = Reason.EXPIRED
        if reason is Reason.UNSPECIFIED and permission and permission not in claims.matcher.exact:
            normalized = normalize(permission)
            if not is_permission(normalized):
                reason = Reason.INVALID_PERMISSION
            elif not claims.matcher.allows(normalized):
                reason = Reason.PERMISSION_DENIED
        return ValidationResult(
            valid=reason is Reason.UNSPECIFIED,
            reason=reason,
            token_id=claims.token_id,
            organization=claims.organization,
            subject=claims.subject,
            scopes=claims.scopes,
            expires_at=datetime.fromtimestamp(claims.expires_at, UTC),
        )

    def _claims(self, access_token: str) -> _Claims | Reason:
        """The claims of a token the published keys vouch for (remembered for the next
        time), or why not: MALFORMED or UNKNOWN."""
        if len(access_token) > MAX_ACCESS_TOKEN_LENGTH:
            return Reason.MALFORMED
        with self._cache_lock:
            cached = self._verified.get(access_token)
            if cached is not None:
                self._verified.move_to_end(access_token)
                return cached
        claims = self._read(access_token)
        if isinstance(claims, _Claims) and self._cache_size > 0:
            with self._cache_lock:
                self._verified[access_token] = claims
                if len(self._verified) > self._cache_size:
                    self._verified.popitem(last=False)
        return claims

    def _read(self, access_token: str) -> _Claims | Reason:
        """Read once: the header for the key, then the signature checked by PyJWT's algorithm
        for that key (over the exact bytes signed), then the claims. `jwt.decode` after
        `get_unverified_header` would parse the token twice."""
        if not _looks_like_jwt(access_token):
            return Reason.MALFORMED
        header_segment, payload_segment, signature_segment = access_token.split(".")
        try:
            header = _json_object(header_segment)
            signature = _b64url_decode(signature_segment)
        except ValueError:
            return Reason.MALFORMED
        # The algorithm is checked against ours and the key's, never taken from the token.
        # The service signs no critical extensions (nor detached payloads): such a header
        # is not one of its tokens.
        algorithm = header.get("alg")
        if (
            algorithm not in ALGORITHMS
            or header.get("typ") != ACCESS_TOKEN_TYPE
            or "crit" in header
            or "b64" in header
        ):
            return Reason.MALFORMED
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            return Reason.MALFORMED
        key = self._keys.key(kid) if kid is not None else None
        if key is None:
            return Reason.UNKNOWN
        if key.algorithm_name != algorithm:
            return Reason.MALFORMED
        signed = access_token[: len(header_segment) + 1 + len(payload_segment)].encode("ascii")
        if not key.Algorithm.verify(signed, key.key, signature):
            return Reason.UNKNOWN
        try:
            payload = _json_object(payload_segment)
        except ValueError:
            return Reason.MALFORMED
        return _Claims.read(payload) or Reason.MALFORMED
