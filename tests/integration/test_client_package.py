"""The `authority-client` package: its client against a real server, and installed from its wheel.

Nothing here builds protobuf messages by hand: the point is what a service that installs the
client sees.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import pytest

from authority.client import (
    AlreadyExists,
    AsyncTokenAuthorityClient,
    AuthorityClientError,
    FailedPrecondition,
    InvalidArgument,
    IssuedToken,
    Membership,
    NotFound,
    PermissionDenied,
    PrincipalKind,
    Reason,
    Role,
    ScopeProfile,
    TokenAuthorityClient,
    Unauthenticated,
    Unavailable,
    ValidationResult,
)
from authority.domain.token_format import new_token
from tests.conftest import Deployment
from tests.harness import bootstrap_admin, serve, unique

REPOSITORY = Path(__file__).resolve().parents[2]
UNKNOWN_TOKEN_ID = "0000000000000000"


@pytest.fixture
def admin(deployment: Deployment) -> Iterator[TokenAuthorityClient]:
    """A client holding the bootstrap administrator's token."""
    with TokenAuthorityClient(deployment.server.address, token=deployment.admin_token) as client:
        yield client


@pytest.fixture
def organization(admin: TokenAuthorityClient) -> str:
    return admin.create_organization(unique("acme"), "Acme Inc.").name


# -- validate ---------------------------------------------------------------------------------


def test_download_only_token_validates_for_download_with_its_details_and_not_for_upload(
    admin: TokenAuthorityClient, organization: str, deployment: Deployment
) -> None:
    issued = admin.issue_token(
        organization, "ci-download", scope_profile=ScopeProfile.DOWNLOAD_ONLY
    )
    # Validate needs no bearer: a client without a token can answer.
    with TokenAuthorityClient(deployment.server.address) as anonymous:
        download = anonymous.validate(issued.secret, "download")
        upload = anonymous.validate(issued.secret, "upload")
        alive = anonymous.validate(issued.secret)

    assert download == ValidationResult(
        valid=True,
        reason=Reason.UNSPECIFIED,
        token_id=issued.token.token_id,
        organization=organization,
        subject="",
        scopes=("download",),
        expires_at=None,
    )
    assert not upload.valid and upload.reason is Reason.PERMISSION_DENIED
    assert upload.token_id == issued.token.token_id
    assert alive.valid


def test_refusals_are_answers_with_a_reason_not_exceptions(admin: TokenAuthorityClient) -> None:
    malformed = admin.validate("tka_not-a-token", "download")
    unknown = admin.validate(new_token().value, "download")

    assert (malformed.valid, malformed.reason, malformed.token_id) == (
        False,
        Reason.MALFORMED,
        "",
    )
    assert (unknown.valid, unknown.reason) == (False, Reason.UNKNOWN)
    assert str(unknown.reason) == "REASON_UNKNOWN"  # the proto name, as grpcurl shows it


def test_validate_batch_answers_each_item_in_order(
    admin: TokenAuthorityClient, organization: str
) -> None:
    download_only = admin.issue_token(organization, "dl", scopes=["download-only"])
    everything = admin.issue_token(organization, "all")

    results = admin.validate_batch(
        [
            (download_only.secret, "upload"),
            everything.secret,
            "garbage",
            (everything.secret, "upload"),
            (download_only.secret, "download"),
        ]
    )

    assert [(result.valid, result.reason) for result in results] == [
        (False, Reason.PERMISSION_DENIED),
        (True, Reason.UNSPECIFIED),
        (False, Reason.MALFORMED),
        (True, Reason.UNSPECIFIED),
        (True, Reason.UNSPECIFIED),
    ]
    assert results[1].token_id == everything.token.token_id
    assert set(results[1].scopes) == {"upload", "download"}
    assert admin.validate_batch([]) == []


def test_an_oversized_batch_is_an_invalid_argument_on_the_server_and_in_the_client(
    admin: TokenAuthorityClient, organization: str
) -> None:
    """Server and client agree: too many requests is a malformed request, not a quota."""
    everything = admin.issue_token(organization, "all")

    with pytest.raises(InvalidArgument) as too_many:
        admin.validate_batch([everything.secret] * 1001)

    assert too_many.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert too_many.value.reason == "BATCH_TOO_LARGE"
    assert too_many.value.fields == ("requests",)
    assert len(admin.validate_batch([everything.secret] * 1000)) == 1000


def test_every_refusal_carries_its_reason_for_programs_to_branch_on(
    admin: TokenAuthorityClient, organization: str, deployment: Deployment
) -> None:
    issued = admin.issue_token(organization, "short-lived")
    admin.revoke_token(issued.token.token_id)

    with pytest.raises(NotFound) as missing:
        admin.get_token(UNKNOWN_TOKEN_ID)
    with (
        TokenAuthorityClient(deployment.server.address, token=issued.secret) as revoked,
        pytest.raises(Unauthenticated) as refused,
    ):
        list(revoked.list_tokens(organization))

    assert missing.value.reason == "TOKEN_NOT_FOUND"
    assert refused.value.reason == "TOKEN_REVOKED"


def test_validate_answers_show_the_tokens_properties(
    admin: TokenAuthorityClient, organization: str
) -> None:
    issued = admin.issue_token(organization, "tagged", properties={"team": "infra"})

    assert admin.validate(issued.secret).properties == {"team": "infra"}
    assert admin.validate("garbage").properties == {}


# -- tokens -----------------------------------------------------------------------------------


def test_issued_token_round_trips_its_fields_and_hides_its_secret_from_repr(
    admin: TokenAuthorityClient, organization: str
) -> None:
    issued = admin.issue_token(
        organization,
        "ci-uploader",
        scopes=["environment.control.*", "download"],
        description="uploads build artefacts",
        ttl=timedelta(hours=2),
        properties={"team": "build", "ticket": "OPS-1"},
    )
    token = issued.token

    assert isinstance(issued, IssuedToken) and issued.secret.startswith("tka_")
    assert issued.secret not in repr(issued)
    assert (token.organization, token.label, token.description, token.subject) == (
        organization,
        "ci-uploader",
        "uploads build artefacts",
        "",
    )
    assert set(token.scopes) == {"environment.control.*", "download"}
    assert dict(token.properties) == {"team": "build", "ticket": "OPS-1"}
    assert token.expires_at == token.created_at + timedelta(hours=2)
    assert token.created_at.tzinfo is not None and not token.revoked
    assert admin.get_token(token.token_id) == token
    assert admin.validate(issued.secret, "environment.control.StopEnv").expires_at == (
        token.expires_at
    )


def test_expires_at_is_sent_as_the_instant_given(
    admin: TokenAuthorityClient, organization: str
) -> None:
    # An aware datetime in another zone is the same instant in UTC.
    moment = datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC)
    elsewhere = moment.astimezone(ZoneInfo("Asia/Tokyo"))

    issued = admin.issue_token(organization, "dated", expires_at=elsewhere)

    assert issued.token.expires_at == moment
    with pytest.raises(ValueError, match="timezone-aware"):
        admin.issue_token(organization, "naive", expires_at=datetime(2099, 1, 1))
    with pytest.raises(ValueError, match="at most one"):
        admin.issue_token(organization, "both", ttl=timedelta(hours=1), expires_at=moment)


def test_list_tokens_iterates_every_page_newest_first_and_hides_revoked_by_default(
    admin: TokenAuthorityClient, organization: str
) -> None:
    issued = [admin.issue_token(organization, f"token-{number}") for number in range(5)]
    newest_first = [item.token.token_id for item in reversed(issued)]

    listed = [token.token_id for token in admin.list_tokens(organization, page_size=2)]
    assert listed == newest_first

    revoked = admin.revoke_token(issued[0].token.token_id)
    assert revoked.revoked and revoked.revoked_at is not None
    alive = [token.token_id for token in admin.list_tokens(organization, page_size=2)]
    everything = list(admin.list_tokens(organization, include_revoked=True, page_size=2))
    assert alive == newest_first[:-1]
    assert [token.token_id for token in everything] == newest_first
    assert everything[-1].revoked_at == revoked.revoked_at


def test_revoked_token_is_refused_and_a_second_revoke_keeps_the_first_revoked_at(
    admin: TokenAuthorityClient, organization: str
) -> None:
    issued = admin.issue_token(organization, "short-lived")
    assert admin.validate(issued.secret, "download").valid

    first = admin.revoke_token(issued.token.token_id)
    second = admin.revoke_token(issued.token.token_id)

    assert first.revoked_at is not None and second.revoked_at == first.revoked_at
    after = admin.validate(issued.secret, "download")
    assert (after.valid, after.reason, after.token_id) == (
        False,
        Reason.REVOKED,
        issued.token.token_id,
    )


# -- administration ---------------------------------------------------------------------------


def test_members_are_added_listed_and_removed_with_their_tokens_revoked(
    admin: TokenAuthorityClient, organization: str
) -> None:
    owner = admin.create_principal(unique("owner"), PrincipalKind.USER)
    bot = admin.create_principal(unique("bot"), "service")
    assert (owner.kind, bot.kind, bot.global_admin) == (
        PrincipalKind.USER,
        PrincipalKind.SERVICE,
        False,
    )

    admin.add_member(organization, owner.name, Role.OWNER)
    added = admin.add_member(organization, bot.name, "member")
    assert added == Membership(organization, bot.name, Role.MEMBER)
    assert set(admin.list_members(organization)) == {
        Membership(organization, owner.name, Role.OWNER),
        Membership(organization, bot.name, Role.MEMBER),
    }
    bot_token = admin.issue_token(organization, "bot", subject=bot.name)
    assert admin.validate(bot_token.secret).subject == bot.name

    revoked_ids = admin.remove_member(organization, bot.name)

    assert revoked_ids == (bot_token.token.token_id,)
    assert admin.list_members(organization) == [Membership(organization, owner.name, Role.OWNER)]
    assert admin.validate(bot_token.secret).reason is Reason.REVOKED


def test_list_organizations_iterates_every_page(admin: TokenAuthorityClient) -> None:
    created = {admin.create_organization(unique("org")).name for _ in range(3)}

    listed = [item.name for item in admin.list_organizations(page_size=2)]

    assert created <= set(listed)
    assert len(listed) == len(set(listed))


# -- errors -----------------------------------------------------------------------------------


def test_unknown_token_id_raises_not_found_with_code_and_message(
    admin: TokenAuthorityClient,
) -> None:
    with pytest.raises(NotFound) as raised:
        admin.get_token(UNKNOWN_TOKEN_ID)

    assert raised.value.code is grpc.StatusCode.NOT_FOUND
    assert UNKNOWN_TOKEN_ID in raised.value.message
    assert isinstance(raised.value, AuthorityClientError)


def test_invalid_argument_names_the_field_from_the_rich_status(
    admin: TokenAuthorityClient, organization: str
) -> None:
    with pytest.raises(InvalidArgument) as missing_label:
        admin.issue_token(organization, "l" * 101)
    with pytest.raises(InvalidArgument) as bad_id:
        admin.revoke_token("not-an-id")

    assert missing_label.value.fields == ("label",)
    assert missing_label.value.field_violations[0].description
    assert missing_label.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert bad_id.value.fields == ("token_id",)


def test_each_refusal_status_has_its_own_exception(
    admin: TokenAuthorityClient, organization: str, deployment: Deployment
) -> None:
    address = deployment.server.address
    download_only = admin.issue_token(organization, "dl", scopes=["download-only"])
    with pytest.raises(AlreadyExists):
        admin.create_organization(organization)
    with TokenAuthorityClient(address) as anonymous, pytest.raises(Unauthenticated):
        anonymous.issue_token(organization, "nobody")
    with (
        TokenAuthorityClient(address, token=download_only.secret) as weak,
        pytest.raises(PermissionDenied),
    ):
        weak.issue_token(organization, "escalation")
    # The only owner cannot leave: the organisation would have nobody to manage it.
    owner = admin.create_principal(unique("owner")).name
    admin.add_member(organization, owner, Role.OWNER)
    with pytest.raises(FailedPrecondition):
        admin.remove_member(organization, owner)
    # A list refused by the server raises at the call, not at the first iteration.
    with pytest.raises(NotFound):
        admin.list_tokens(unique("nowhere"))


def test_a_server_that_is_down_raises_unavailable() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with (
        TokenAuthorityClient(f"127.0.0.1:{port}", timeout=2.0) as client,
        pytest.raises(Unavailable) as raised,
    ):
        client.validate("tka_anything")
    assert raised.value.code is grpc.StatusCode.UNAVAILABLE


def test_a_channel_passed_in_is_used_and_left_open(deployment: Deployment) -> None:
    channel = deployment.server.channel
    with TokenAuthorityClient("ignored", channel=channel) as client:
        assert client.validate("garbage").reason is Reason.MALFORMED
    # Still usable by its owner after the client closed.
    assert TokenAuthorityClient("ignored", channel=channel).validate("x").reason is (
        Reason.MALFORMED
    )


# -- asyncio ----------------------------------------------------------------------------------


def test_async_client_validates_issues_and_revokes(
    deployment: Deployment, organization: str
) -> None:
    async def scenario() -> tuple[list[ValidationResult], str, list[str]]:
        async with AsyncTokenAuthorityClient(
            deployment.server.address, token=deployment.admin_token
        ) as client:
            issued = await client.issue_token(organization, "async", scopes=["download-only"])
            before = await client.validate(issued.secret, "download")
            batch = await client.validate_batch([(issued.secret, "upload"), "garbage"])
            await client.revoke_token(issued.token.token_id)
            after = await client.validate(issued.secret, "download")
            fetched = await client.get_token(issued.token.token_id)
            errors = []
            for call in (
                client.get_token(UNKNOWN_TOKEN_ID),
                client.issue_token(organization, "l" * 101),
            ):
                try:
                    await call
                except AuthorityClientError as error:
                    fields = error.fields if isinstance(error, InvalidArgument) else ()
                    errors.append(f"{type(error).__name__}{list(fields)}")
            assert fetched.revoked
            return [before, *batch, after], issued.token.token_id, errors

    results, token_id, errors = asyncio.run(scenario())

    assert [(result.valid, result.reason) for result in results] == [
        (True, Reason.UNSPECIFIED),
        (False, Reason.PERMISSION_DENIED),
        (False, Reason.MALFORMED),
        (False, Reason.REVOKED),
    ]
    assert results[0].token_id == token_id
    assert errors == ["NotFound[]", "InvalidArgument['label']"]


# -- the package as another service installs it -----------------------------------------------

_INSTALLED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import authority.client
    from authority.client import NotFound, TokenAuthorityClient

    address, admin_token = sys.argv[1], sys.argv[2]
    try:
        import authority.server
        server_importable = True
    except ImportError:
        server_importable = False
    with TokenAuthorityClient(address, token=admin_token) as client:
        org = client.create_organization("wheel-org").name
        issued = client.issue_token(org, "from-the-wheel", scope_profile="download-only")
        download = client.validate(issued.secret, "download")
        upload = client.validate(issued.secret, "upload")
        try:
            client.get_token("0000000000000000")
            not_found = False
        except NotFound:
            not_found = True
    print(json.dumps({
        "client_file": authority.client.__file__,
        "server_importable": server_importable,
        "download": [download.valid, download.reason.value, download.organization],
        "upload": [upload.valid, upload.reason.value],
        "not_found": not_found,
    }))
    """
)


def test_wheel_installs_into_a_fresh_venv_and_validates_against_a_server(
    tmp_path: Path, fresh_database: str
) -> None:
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    # The dev venv's hatchling builds it: no build environment to download.
    pip, project = [sys.executable, "-m", "pip"], REPOSITORY / "clients" / "python"
    _run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, project])
    (wheel,) = wheels.glob("authority_client-*.whl")
    # A venv with nothing in it; this pip installs into it (faster than seeding one). Its
    # dependencies come from the package index, through pip's cache.
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([*pip, "--python", python, "install", "-q", wheel])

    with serve(fresh_database) as server:
        admin_token = _bootstrap(fresh_database)
        completed = subprocess.run(
            [str(python), "-I", "-c", _INSTALLED_SCRIPT, server.address, admin_token],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert Path(report["client_file"]).is_relative_to(venv)
    assert report["server_importable"] is False
    assert report["download"] == [True, "REASON_UNSPECIFIED", "wheel-org"]
    assert report["upload"] == [False, "REASON_PERMISSION_DENIED"]
    assert report["not_found"] is True


def _run(command: list[str | Path]) -> None:
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, f"{command}:\n{completed.stdout}\n{completed.stderr}"


def _bootstrap(database_url: str) -> str:
    """The first administrator's token, as `authority bootstrap` would create it."""
    return bootstrap_admin(database_url)
