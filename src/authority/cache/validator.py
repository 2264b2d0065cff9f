"""Validate with an in-process cache in front of the store.

A hit does no I/O and awaits nothing; a miss reads the store once however many callers ask
for the same id at the same moment. The decision itself is `domain.validation.check`, the same
code for hits and misses. Everything here runs on the event loop thread, so the dictionaries
need no locks.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from authority.domain.clock import Clock, system_clock
from authority.domain.exchange import (
    MAX_ACCESS_TOKEN_LENGTH,
    AccessClaims,
    SignedClaims,
    access_entry,
    looks_like_jwt,
)
from authority.domain.token_format import SecretHasher, parse_token
from authority.domain.validation import (
    MALFORMED,
    UNKNOWN,
    Reason,
    ValidationEntry,
    Verdict,
    check,
    decide,
)

Loader = Callable[[str], Awaitable[ValidationEntry | None]]


class SignedReader(Protocol):
    """Signed access tokens against the key ring in use (domain.exchange.AccessTokenReader)."""

    def read(self, value: str, now: datetime) -> SignedClaims | Reason:
        """Signature, then claims: the claims and the key that signed them, or why not."""
        ...

    def publishes(self, kid: str, now_ts: float) -> bool:
        """Whether the key `kid` is still published (a held token's key must be, at each use)."""
        ...

    def key_set(self) -> object:
        """The key set in use, compared by identity: a refusal holds only while it is the
        same (after a rotation, a token of an unknown key id may verify)."""
        ...


class _Read:
    """What `_cached_entry` answers when the entry must be read from the store first."""


_READ = _Read()


class _Signed:
    """A verified access token in the cache: its claims and the key that signed them, and the
    entry answered from, built from the parent key's entry it was last checked against
    (rebuilt when that changes)."""

    __slots__ = ("claims", "entry", "kid", "parent")

    def __init__(self, signed: SignedClaims) -> None:
        self.claims = signed.claims
        self.kid = signed.kid
        self.entry: ValidationEntry | None = None
        self.parent: ValidationEntry | None = None


class Presented(Protocol):
    """A token value as presented, with the permission asked for (a ValidateRequest)."""

    @property
    def token(self) -> str: ...
    @property
    def permission(self) -> str: ...


Monotonic = Callable[[], float]


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Bounds of the cache. `max_entries=0` disables it: every Validate reads the store.

    `access_token_entries` bounds the verified access tokens on their own (0: none kept, each
    is verified again): they are keyed by their whole value, up to 4 KB, and a job mints a new
    one at every refresh, so they must not share the keys' bound or memory.
    """

    max_entries: int = 100_000
    max_staleness: float = 30.0
    negative_entries: int = 10_000
    negative_ttl: float = 5.0
    access_token_entries: int = 10_000


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    size: int
    negative_hits: int
    negative_size: int
    coalesced: int
    store_reads: int
    invalidations: int
    max_entries: int


class Validator:
    """Answers Validate for one process; `invalidate` keeps it exact for changes made here.

    Live tokens and ids that do not exist are kept apart: a flood of random well-formed ids
    fills only the small, short-lived negative map and cannot evict a live entry.
    """

    def __init__(
        self,
        load: Loader,
        hasher: SecretHasher,
        clock: Clock,
        config: CacheConfig,
        monotonic: Monotonic = time.monotonic,
        read_signed: SignedReader | None = None,
    ) -> None:
        self._load = load
        self._read_signed = read_signed
        self._hasher = hasher
        # The wall clock as a float, read on every Validate: skip building a datetime when
        # the clock is the system's (tests inject their own and keep full control).
        self._now: Callable[[], float] = (
            time.time if clock is system_clock else lambda: clock().timestamp()
        )
        self._config = config
        self._max_staleness = config.max_staleness
        self._monotonic = monotonic
        # token id -> (entry, monotonic time it was read at)
        self._entries: OrderedDict[str, tuple[ValidationEntry, float]] = OrderedDict()
        self._absent: OrderedDict[str, float] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[ValidationEntry | None]] = {}
        # Signed access tokens, by the WHOLE value (never by jti alone: a forged token with a
        # known jti must not find a verified entry): verified ones and the ones this process
        # signed (each held with its key's kid, which must still be published at every use),
        # up to their own bound; and refused ones apart, for the negative TTL only (a kid
        # unknown here may be another process's newest key). The value itself is the key, not
        # a digest of it: Python's own str hash costs a fifth of a SHA-256 digest (about 0.16
        # against 0.8 microseconds for an 800-character token), on every Validate of one; the
        # bound caps the memory (access_token_entries x 4 KB at most).
        self._signed: OrderedDict[str, _Signed] = OrderedDict()
        self._signed_refused: OrderedDict[str, tuple[Verdict, float, object]] = OrderedDict()
        # When the change feed last confirmed every entry (see `confirm`); -inf: never.
        self.confirmed = -math.inf
        self._hits = self._misses = self._evictions = self._negative_hits = 0
        self._coalesced = self._store_reads = self._invalidations = 0

    def validate_now(self, value: str, permission: str) -> Verdict | None:
        """The verdict if it needs no store read (malformed, cached, known absent), else None.

        Synchronous, so that the hot path creates no coroutine; `validate` finishes the rest.
        """
        return self._answer(value, permission, self._now(), self._monotonic())

    def validate_many(self, requests: Sequence[Presented]) -> list[Verdict | None]:
        """`validate_now` for a batch, reading the clocks once for all of it."""
        answer = self._answer
        now_ts = self._now()
        mono = self._monotonic()
        return [answer(request.token, request.permission, now_ts, mono) for request in requests]

    async def validate_batch(self, requests: Sequence[Presented]) -> list[Verdict]:
        """One verdict per request, in order; the misses' store reads run concurrently."""
        found = self.validate_many(requests)
        misses = [index for index, verdict in enumerate(found) if verdict is None]
        if misses:
            read = await asyncio.gather(
                *(self.validate_missed(requests[i].token, requests[i].permission) for i in misses)
            )
            for index, verdict in zip(misses, read, strict=True):
                found[index] = verdict
        return found  # type: ignore[return-value]  # every None was just replaced

    def _answer(self, value: str, permission: str, now_ts: float, mono: float) -> Verdict | None:
        token = parse_token(value)
        if token is None:
            return self._answer_signed(value, permission, now_ts, mono)
        token_id = token.token_id
        cached = self._entries.get(token_id)
        # Fresh while read, or confirmed by the change feed, within the staleness bound.
        if cached is not None and (
            mono - cached[1] < self._max_staleness or mono - self.confirmed < self._max_staleness
        ):
            self._hits += 1
            self._entries.move_to_end(token_id)
            return check(cached[0], token, permission, now_ts, self._hasher)
        absent_until = self._absent.get(token_id)
        if absent_until is not None:
            if mono < absent_until:
                self._negative_hits += 1
                return UNKNOWN
            del self._absent[token_id]
        return None

    async def validate(self, value: str, permission: str) -> Verdict:
        """The verdict on a presented token value for `permission` ("" = alive only)."""
        verdict = self.validate_now(value, permission)
        if verdict is not None:
            return verdict
        return await self.validate_missed(value, permission)

    async def validate_missed(self, value: str, permission: str) -> Verdict:
        """Finish a Validate that `validate_now` answered None: read the store, then decide."""
        token = parse_token(value)
        if token is None:  # a signed access token whose parent key must be read
            return await self._signed_missed(value, permission)
        entry = await self._miss(token.token_id)
        return check(entry, token, permission, self._now(), self._hasher)

    # -- signed access tokens -------------------------------------------------------------------

    def _answer_signed(
        self, value: str, permission: str, now_ts: float, mono: float
    ) -> Verdict | None:
        """Not a `tka_` token: an access token if it verifies (once: its claims are kept),
        answered like its parent key's entry says; MALFORMED if it is not even shaped like one;
        None when the parent must be read first."""
        signed = self._signed_claims(value, now_ts, mono)
        if isinstance(signed, Verdict):
            return signed
        parent = self._cached_entry(signed.claims.parent, mono)
        if isinstance(parent, _Read):
            return None
        return self._decide_signed(signed, parent, permission, now_ts)

    async def _signed_missed(self, value: str, permission: str) -> Verdict:
        signed = self._signed_claims(value, self._now(), self._monotonic())
        if isinstance(signed, Verdict):
            return signed
        parent = await self._miss(signed.claims.parent)
        return self._decide_signed(signed, parent, permission, self._now())

    def access_claims(self, value: str, now: datetime) -> AccessClaims | Reason:
        """An access token's claims (RefreshToken's question): from the cache when it holds
        the token and its key is still published, else verified (and then held); or why not,
        MALFORMED or UNKNOWN. Synchronous: it never reads the store."""
        signed = self._signed_claims(value, now.timestamp(), self._monotonic())
        return signed.reason if isinstance(signed, Verdict) else signed.claims

    def signed(self, value: str, signed: SignedClaims) -> None:
        """Hold a token this process just signed as verified: its first Validate or refresh
        here checks no signature."""
        if self._read_signed is not None:
            self._hold_signed(value, _Signed(signed))

    def _hold_signed(self, value: str, signed: _Signed) -> None:
        bound = self._config.access_token_entries
        if bound > 0:
            self._signed[value] = signed
            self._signed.move_to_end(value)
            if len(self._signed) > bound:
                self._signed.popitem(last=False)

    def _signed_claims(self, value: str, now_ts: float, mono: float) -> _Signed | Verdict:
        reader = self._read_signed
        if reader is None or len(value) > MAX_ACCESS_TOKEN_LENGTH:
            return MALFORMED  # before hashing a value of any length into a lookup
        signed = self._signed.get(value)
        if signed is not None:
            # Verified against a key that may have left the published set since: a check now
            # would say UNKNOWN, so the cache must too (rotation alone keeps a key published).
            if not reader.publishes(signed.kid, now_ts):
                del self._signed[value]
                return UNKNOWN
            self._signed.move_to_end(value)
            return signed
        refused = self._signed_refused.get(value)
        if refused is not None:
            if mono < refused[1] and refused[2] is reader.key_set():
                return refused[0]
            del self._signed_refused[value]
        if not looks_like_jwt(value):
            return MALFORMED
        key_set = reader.key_set()  # before the read: a rotation during it cannot stick
        read = reader.read(value, datetime.fromtimestamp(now_ts, UTC))
        config = self._config
        if isinstance(read, Reason):
            verdict = MALFORMED if read is Reason.MALFORMED else UNKNOWN
            if config.negative_entries > 0:
                self._signed_refused[value] = (verdict, mono + config.negative_ttl, key_set)
                if len(self._signed_refused) > config.negative_entries:
                    self._signed_refused.popitem(last=False)
            return verdict
        signed = _Signed(read)
        self._hold_signed(value, signed)
        return signed

    def _cached_entry(self, token_id: str, mono: float) -> ValidationEntry | _Read | None:
        """A key's entry if the cache can answer for it (None: known absent), else _READ."""
        cached = self._entries.get(token_id)
        if cached is not None and (
            mono - cached[1] < self._max_staleness or mono - self.confirmed < self._max_staleness
        ):
            self._hits += 1
            self._entries.move_to_end(token_id)
            return cached[0]
        absent_until = self._absent.get(token_id)
        if absent_until is not None and mono < absent_until:
            self._negative_hits += 1
            return None
        return _READ

    @staticmethod
    def _decide_signed(
        signed: _Signed, parent: ValidationEntry | None, permission: str, now_ts: float
    ) -> Verdict:
        if parent is None or parent.parent:
            return UNKNOWN  # the key is gone (or the claims name something not a key)
        entry = signed.entry
        if entry is None or signed.parent is not parent:
            entry = signed.entry = access_entry(signed.claims, parent)
            signed.parent = parent
        return decide(entry, permission, now_ts)

    async def key_entry(self, token_id: str) -> ValidationEntry | None:
        """A key's entry by id (no secret check: for an access token's parent), from the
        cache when it can answer, else read once (and cached) like a Validate miss."""
        cached = self._cached_entry(token_id, self._monotonic())
        if not isinstance(cached, _Read):
            return cached
        return await self._miss(token_id)

    async def _miss(self, token_id: str) -> ValidationEntry | None:
        self._misses += 1
        if self._config.max_entries <= 0:
            self._store_reads += 1
            return await self._load(token_id)
        pending = self._inflight.get(token_id)
        if pending is None:
            # The read is a task of its own: a caller that is cancelled (deadline, hang-up)
            # stops waiting for it without cancelling it for the others.
            self._store_reads += 1
            pending = asyncio.ensure_future(self._read(token_id))
            pending.add_done_callback(_retrieve)
            self._inflight[token_id] = pending
        else:
            self._coalesced += 1
        return await asyncio.shield(pending)

    async def _read(self, token_id: str) -> ValidationEntry | None:
        """One store read; cached only if no invalidation of this token detached it meanwhile."""
        this = asyncio.current_task()
        try:
            entry = await self._load(token_id)
        except BaseException:
            if self._inflight.get(token_id) is this:
                del self._inflight[token_id]
            raise
        if self._inflight.get(token_id) is this:
            del self._inflight[token_id]
            self._remember(token_id, entry)
        return entry

    def _remember(self, token_id: str, entry: ValidationEntry | None) -> None:
        config = self._config
        now = self._monotonic()
        if entry is None:
            self._entries.pop(token_id, None)
            if config.negative_entries > 0:
                self._absent[token_id] = now + config.negative_ttl
                if len(self._absent) > config.negative_entries:
                    self._absent.popitem(last=False)
            return
        self._entries[token_id] = (entry, now)
        self._entries.move_to_end(token_id)
        if len(self._entries) > config.max_entries:
            self._entries.popitem(last=False)
            self._evictions += 1

    def invalidate(self, token_id: str) -> None:
        """Forget a token now: the next Validate re-reads the store.

        Called on the event loop by the change feed: for a change made here, after it committed
        and before the RPC that made it returns. A read of this token already in flight is
        detached, so that no later caller joins it and its answer is not cached; reads of
        other tokens are not disturbed.
        """
        self._invalidations += 1
        self._entries.pop(token_id, None)
        self._absent.pop(token_id, None)
        self._inflight.pop(token_id, None)

    def confirm(self, moment: float) -> None:
        """The change feed has applied every change committed before monotonic `moment`: every
        entry is as fresh as that moment, however long ago it was read."""
        self.confirmed = max(self.confirmed, moment)

    def stats(self) -> CacheStats:
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            size=len(self._entries),
            negative_hits=self._negative_hits,
            negative_size=len(self._absent),
            coalesced=self._coalesced,
            store_reads=self._store_reads,
            invalidations=self._invalidations,
            max_entries=self._config.max_entries,
        )


def _retrieve(task: asyncio.Future[ValidationEntry | None]) -> None:
    """Mark a failed read's exception as seen: its waiters re-raise it, nobody else must."""
    if not task.cancelled():
        task.exception()
