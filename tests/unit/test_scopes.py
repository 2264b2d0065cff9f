"""Scopes: profiles, the permission grammar, and the matcher Validate and IssueToken rely on."""

from __future__ import annotations

import pytest

from authority.domain.errors import InvalidArgument
from authority.domain.scopes import (
    MAX_SCOPE_LENGTH,
    MAX_SCOPES,
    PermissionMatcher,
    is_permission,
    method_permission,
    normalize,
    parse_scopes,
)


def matcher(*scopes: str) -> PermissionMatcher:
    return PermissionMatcher.compile(parse_scopes(scopes, None))


# -- profiles ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ("all", ("download", "upload")),
        ("upload-only", ("upload",)),
        ("download-only", ("download",)),
    ],
)
def test_a_profile_expands_to_its_permissions(profile: str, expected: tuple[str, ...]) -> None:
    assert parse_scopes([], profile) == expected
    assert parse_scopes([profile], None) == expected


def test_nothing_requested_means_the_all_profile() -> None:
    assert parse_scopes([], None) == ("download", "upload")
    assert parse_scopes([], "") == ("download", "upload")


def test_a_profile_combines_with_custom_scopes_sorted_without_duplicates() -> None:
    scopes = parse_scopes(["environment.control.*", "download", "download"], "download-only")
    assert scopes == ("download", "environment.control.*")


def test_surrounding_whitespace_is_ignored() -> None:
    assert parse_scopes([" download-only ", "\tenvironment.control.StopEnv\n"], None) == (
        "download",
        "environment.control.StopEnv",
    )


# -- grammar ----------------------------------------------------------------------------------


def test_the_grpc_wire_form_of_a_method_normalises_to_the_dotted_form() -> None:
    assert parse_scopes(["/authority.v1.TokenAuthority/IssueToken"], None) == (
        "authority.v1.TokenAuthority.IssueToken",
    )
    assert normalize("/authority.v1.TokenAuthority/IssueToken") == (
        "authority.v1.TokenAuthority.IssueToken"
    )
    assert method_permission("/authority.v1.Admin/AddMember") == "authority.v1.Admin.AddMember"
    assert normalize("download") == "download"


@pytest.mark.parametrize(
    "scope",
    [
        "download",
        "environment.control.StopEnv",
        "environment.control.*",
        "*",
        "_private.x-y.Z9",
        "a" * MAX_SCOPE_LENGTH,
    ],
)
def test_a_well_formed_scope_is_kept_as_given(scope: str) -> None:
    assert parse_scopes([scope], None) == (scope,)


@pytest.mark.parametrize(
    "scope",
    [
        "",
        " ",
        "bad scope",
        "a.*.b",
        "**",
        "*.a",
        "a*",
        "a.**",
        "a..b",
        ".a",
        "a.",
        "1abc",
        "a.1b",
        "a/b",
        "a;b",
        "d\u00f3wnload",
        "download\x00",
        "a" * (MAX_SCOPE_LENGTH + 1),
        "a." * 100 + "*",
    ],
)
def test_a_malformed_scope_is_refused_naming_the_scopes_field(scope: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        parse_scopes(["download", scope], None)
    assert refused.value.field == "scopes"


def test_at_most_64_scopes_per_token() -> None:
    names = [f"service.Method{number}" for number in range(MAX_SCOPES)]
    assert len(parse_scopes(names, None)) == MAX_SCOPES
    with pytest.raises(InvalidArgument) as refused:
        parse_scopes([*names, "service.OneTooMany"], None)
    assert refused.value.field == "scopes"


def test_is_permission_accepts_only_concrete_permissions() -> None:
    assert is_permission("environment.control.StopEnv")
    assert not is_permission("environment.control.*")
    assert not is_permission("*")
    assert not is_permission("")
    assert not is_permission("environment.control.")
    assert not is_permission("a" * (MAX_SCOPE_LENGTH + 1))


# -- matching ---------------------------------------------------------------------------------


def test_an_exact_scope_allows_only_that_permission() -> None:
    download = matcher("download-only")
    assert download.allows("download")
    assert not download.allows("upload")
    assert not download.allows("download.more")
    assert not download.allows("downloads")


def test_a_prefix_wildcard_allows_everything_below_the_prefix() -> None:
    control = matcher("environment.control.*")
    assert control.allows("environment.control.StopEnv")
    assert control.allows("environment.control.deeper.StartEnv")


def test_a_prefix_wildcard_does_not_allow_a_longer_sibling_name() -> None:
    assert not matcher("environment.control.*").allows("environment.controlX")
    assert not matcher("environment.control.*").allows("environment.controlX.StopEnv")


def test_a_prefix_wildcard_does_not_allow_the_prefix_itself() -> None:
    assert not matcher("environment.control.*").allows("environment.control")
    assert not matcher("environment.control.*").allows("environment")


def test_star_allows_every_permission() -> None:
    everything = matcher("*")
    for permission in ["download", "upload", "authority.v1.Admin.CreateOrganization"]:
        assert everything.allows(permission)


def test_a_service_wildcard_allows_its_methods_in_dotted_form() -> None:
    service = matcher("/authority.v1.TokenAuthority/*")
    assert service.allows(method_permission("/authority.v1.TokenAuthority/IssueToken"))
    assert not service.allows(method_permission("/authority.v1.Admin/AddMember"))


# -- issuing: a token may not be stronger than its issuer -------------------------------------


def test_a_download_holder_can_issue_only_download() -> None:
    download = matcher("download-only")
    assert download.covers("download")
    for stronger in ["*", "upload", "x.*", "download.*", "download.more"]:
        assert not download.covers(stronger), stronger


def test_a_prefix_holder_can_issue_anything_below_its_prefix() -> None:
    holder = matcher("a.*")
    assert holder.covers("a.*")
    assert holder.covers("a.b.*")
    assert holder.covers("a.b.C")
    assert holder.covers("a.b.c.D")


def test_a_prefix_holder_cannot_issue_a_sibling_prefix_or_the_prefix_itself() -> None:
    holder = matcher("a.*")
    for stronger in ["ab.*", "ab", "a", "*", "b.*"]:
        assert not holder.covers(stronger), stronger


def test_an_exact_holder_cannot_issue_a_wildcard_below_its_name() -> None:
    assert not matcher("a.b").covers("a.b.*")


def test_a_star_holder_can_issue_anything() -> None:
    everything = matcher("*")
    for scope in ["*", "a.*", "download", "upload"]:
        assert everything.covers(scope)
