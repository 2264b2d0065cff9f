"""Errors: mapped to statuses by class hierarchy, with a reason, never echoing a secret."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from authority.api.errors import MAX_MESSAGE, code_of, status_of
from authority.domain import errors
from authority.domain.errors import Reason, shown
from authority.domain.token_format import new_token


class TokenGone(errors.NotFound):
    """A subclass no mapping lists: it must still be NOT_FOUND."""


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument("f", "bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.Unauthenticated("who?"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied("no"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.NotFound("gone"), grpc.StatusCode.NOT_FOUND),
        (TokenGone("gone"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("taken"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition("not now"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.ResourceExhausted("slow down"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unavailable("later"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_each_error_class_and_its_subclasses_map_to_their_status(
    error: errors.AuthorityError, code: grpc.StatusCode
) -> None:
    assert code_of(error) is code


def _details(status: grpc.Status) -> status_pb2.Status:
    for key, value in status.trailing_metadata:
        if key == "grpc-status-details-bin":
            parsed = status_pb2.Status()
            parsed.ParseFromString(value)
            return parsed
    raise AssertionError("no rich status")


def test_every_refusal_carries_an_error_info_with_its_reason() -> None:
    rich = _details(status_of(TokenGone("token 'x' not found", Reason.TOKEN_NOT_FOUND)))
    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("TOKEN_NOT_FOUND", "authority.v1")


def test_a_bad_field_names_itself_and_a_long_message_is_cut() -> None:
    status = status_of(errors.InvalidArgument("label", "x" * 5000))
    rich = _details(status)
    bad_request = error_details_pb2.BadRequest()
    assert rich.details[1].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "label"
    assert len(status.details) <= MAX_MESSAGE
    assert len(bad_request.field_violations[0].description) <= MAX_MESSAGE
    assert rpc_status.to_status(rich).code is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "value",
    [
        new_token().value,
        f"prefix {new_token().value} suffix",
        "A" * 40,  # a long run of letters and digits could be another system's secret
        "tka_short",
    ],
    ids=["a-token", "a-token-in-text", "a-long-alphanumeric-run", "a-tka-prefix"],
)
def test_nothing_shaped_like_a_secret_is_quoted_back(value: str) -> None:
    assert value not in shown(value)
    assert "tka_" not in shown(value)


def test_a_long_value_is_quoted_by_a_short_escaped_prefix() -> None:
    quoted = shown("bad name\n" * 10_000)
    assert len(quoted) < 100
    assert "\\n" in quoted and "90000 characters" in quoted


def test_a_short_value_is_quoted_whole() -> None:
    assert shown("Not A Slug") == "'Not A Slug'"


def test_a_limit_with_a_known_delay_carries_a_retry_info() -> None:
    rich = _details(status_of(errors.ResourceExhausted("slow down", retry_after_seconds=2.5)))
    retry = error_details_pb2.RetryInfo()
    assert rich.details[1].Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 2500
    assert len(_details(status_of(errors.ResourceExhausted("slow down"))).details) == 1
