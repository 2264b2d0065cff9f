"""The audit trail's rules: the refusal limiter (a fake clock), retention (a manual clock, a
real SQLite store), filters, the export's pages, and that no token value ever comes out."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from authority.domain.access import Access
from authority.domain.audit import (
    REDACTED,
    AuditFilter,
    AuditService,
    Refusal,
    RefusalLimiter,
    event_query,
    scrubbed,
)
from authority.domain.errors import InvalidArgument
from authority.domain.events import Event, EventKind, Initiator, Outcome, RecordedEvent
from authority.domain.token_format import new_token
from authority.store.database import create_engines
from authority.store.repository import SqlStore
from tests.harness import ManualClock, create_sqlite_database


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- the refusal limiter ----------------------------------------------------------------------


def test_the_limiter_admits_a_burst_then_the_sustained_rate() -> None:
    clock = FakeMonotonic()
    limiter = RefusalLimiter(rate=10, burst=50, monotonic=clock)

    admitted = [limiter.admit("org:acme") for _ in range(80)]

    assert admitted[:50] == [0] * 50
    assert admitted[50:] == [None] * 30
    clock.now += 0.25  # two and a half more: 10 a second
    assert limiter.admit("org:acme") == 30  # it says how many went unrecorded before it
    assert limiter.admit("org:acme") == 0
    assert limiter.admit("org:acme") is None
    clock.now += 60  # refills to the burst, never beyond
    assert [limiter.admit("org:acme") for _ in range(51)].count(None) == 1


def test_each_organisation_has_its_own_allowance() -> None:
    limiter = RefusalLimiter(rate=1, burst=2, monotonic=FakeMonotonic())

    assert [limiter.admit("org:acme") for _ in range(3)] == [0, 0, None]
    assert [limiter.admit("org:globex") for _ in range(2)] == [0, 0]
    assert limiter.admit("unidentified") == 0


def test_idle_buckets_are_forgotten_so_memory_stays_bounded() -> None:
    clock = FakeMonotonic()
    limiter = RefusalLimiter(rate=1, burst=1, monotonic=clock, max_keys=2)
    limiter.admit("org:a")
    limiter.admit("org:b")
    assert limiter.admit("org:b") is None  # b has something to report: kept
    clock.now += 10

    limiter.admit("org:c")

    assert limiter.admit("org:b") == 1


def test_unidentified_callers_share_one_allowance_whatever_their_address() -> None:
    refusals = [
        Refusal.of("m", "UNAUTHENTICATED", "TOKEN_UNKNOWN", None, f"ipv4:10.0.0.{n}:5", "r")
        for n in range(3)
    ]
    assert {refusal.bucket for refusal in refusals} == {"unidentified"}


# -- retention and export, against a real store -----------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    store = SqlStore(*create_engines(create_sqlite_database(tmp_path), 1))
    yield store
    store.dispose()


def _record(store: SqlStore, clock: ManualClock, subject: str, organization: str = "acme") -> None:
    event = Event(EventKind.ORGANIZATION_CREATED, clock(), Initiator("root"), organization, subject)
    store.run(lambda tx: tx.record(event))


def _subjects(store: SqlStore) -> list[str]:
    return [recorded.event.subject for recorded in store.events_after(0, 1000)]


def test_retention_deletes_only_what_occurred_before_it_in_batches(store: SqlStore) -> None:
    clock = ManualClock()
    audit = AuditService(store, clock, Access(clock), retention_days=30)
    for index in range(5):
        _record(store, clock, f"old-{index}")
    clock.advance(timedelta(days=20).total_seconds())
    _record(store, clock, "recent")
    clock.advance(timedelta(days=11).total_seconds())  # old-* are 31 days old, recent 11

    assert audit.enforce_retention(batch=2) == 5
    assert _subjects(store) == ["recent"]
    assert audit.enforce_retention(batch=2) == 0


def test_retention_keeps_the_newest_event_whatever_its_age(store: SqlStore) -> None:
    """On SQLite the next sequence number is the largest left plus one: an emptied log would
    go back to 1, behind every follower's position."""
    clock = ManualClock()
    audit = AuditService(store, clock, Access(clock), retention_days=1)
    for index in range(3):
        _record(store, clock, f"e{index}")
    last = store.last_sequence()
    clock.advance(timedelta(days=400).total_seconds())

    assert audit.enforce_retention() == 2
    _record(store, clock, "after")

    assert _subjects(store) == ["e2", "after"]
    assert store.last_sequence() == last + 1


def test_zero_days_keeps_every_event(store: SqlStore) -> None:
    clock = ManualClock()
    _record(store, clock, "ancient")
    _record(store, clock, "newest")
    clock.advance(timedelta(days=10_000).total_seconds())

    assert AuditService(store, clock, Access(clock), retention_days=0).enforce_retention() == 0
    assert _subjects(store) == ["ancient", "newest"]


def test_export_reads_every_page_oldest_first_within_the_window(store: SqlStore) -> None:
    clock = ManualClock()
    start = clock()
    for index in range(7):
        _record(store, clock, f"e{index}", organization="acme" if index % 2 else "globex")
        clock.advance(60)
    audit = AuditService(store, clock, Access(clock))

    everything = [recorded.event.subject for recorded in audit.export(AuditFilter(), batch=2)]
    acme = audit.export(AuditFilter(organization="acme"), batch=2)
    window = audit.export(
        AuditFilter(since=start + timedelta(minutes=2), until=start + timedelta(minutes=5)),
        batch=2,
    )

    assert everything == [f"e{index}" for index in range(7)]
    assert [recorded.event.subject for recorded in acme] == ["e1", "e3", "e5"]
    assert [recorded.event.subject for recorded in window] == ["e2", "e3", "e4"]


# -- filters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "field"),
    [
        (AuditFilter(organization="Not A Slug"), "organization"),
        (AuditFilter(actor="key:short"), "actor"),
        (AuditFilter(actor="Bad Name!"), "actor"),
        (AuditFilter(action="token.stolen"), "action"),
        (AuditFilter(object="x" * 161), "object"),
        (AuditFilter(object="line\nbreak"), "object"),
    ],
)
def test_a_bad_filter_is_refused_naming_its_field(wanted: AuditFilter, field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        event_query(wanted)
    assert refused.value.field == field


def test_until_must_follow_since() -> None:
    clock = ManualClock()
    with pytest.raises(InvalidArgument) as refused:
        event_query(AuditFilter(since=clock(), until=clock()))
    assert refused.value.field == "until"


def test_an_organisation_key_is_named_as_created_by_names_it() -> None:
    query = event_query(AuditFilter(actor="key:" + "A" * 16))
    assert (query.actor_principal, query.actor_token_id) == (None, "A" * 16)
    assert event_query(AuditFilter(actor="alice")).actor_principal == "alice"


def test_a_token_value_in_free_text_never_comes_out() -> None:
    secret = new_token().value
    clock = ManualClock()
    event = Event(
        EventKind.TOKEN_ISSUED,
        clock(),
        Initiator("alice", None, "ipv4:127.0.0.1:1", "r1"),
        "acme",
        "a" * 16,
        "a" * 16,
        Outcome.OK,
        {"label": f"ci key {secret} (do not share)"},
    )

    cleaned = scrubbed(RecordedEvent(1, event))

    assert cleaned.event.details["label"] == f"ci key {REDACTED} (do not share)"
    assert secret not in repr(cleaned)
