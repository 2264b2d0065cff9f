"""The README's grpc session, through a real server, on every backend."""

from __future__ import annotations

from authority.v1 import admin_pb2
from authority.v1 import token_authority_pb2 as pb
from tests.conftest import Deployment
from tests.harness import bearer, unique


def test_download_only_token_validates_for_download_and_not_upload_until_revoked(
    deployment: Deployment,
) -> None:
    server, auth = deployment.server, bearer(deployment.admin_token)
    org = unique("acme")
    server.admin.CreateOrganization(admin_pb2.CreateOrganizationRequest(name=org), metadata=auth)
    issued = server.tokens.IssueToken(
        pb.IssueTokenRequest(organization=org, label="ci", scopes=["download-only"]), metadata=auth
    )
    download = server.tokens.Validate(
        pb.ValidateRequest(token=issued.secret, permission="download")
    )
    upload = server.tokens.Validate(pb.ValidateRequest(token=issued.secret, permission="upload"))
    assert download.valid and download.token_id == issued.token.token_id
    assert not upload.valid and upload.reason == pb.REASON_PERMISSION_DENIED

    server.tokens.RevokeToken(pb.RevokeTokenRequest(token_id=issued.token.token_id), metadata=auth)
    after = server.tokens.Validate(pb.ValidateRequest(token=issued.secret, permission="download"))
    assert not after.valid and after.reason == pb.REASON_REVOKED
