"""Admin servicer: organisations, principals, memberships, cache stats, the audit trail,
signing-key rotation."""

from __future__ import annotations

from authority.api import convert
from authority.api.errors import management
from authority.api.runtime import Runtime
from authority.domain.policy import Caller
from authority.v1 import admin_pb2 as pb
from authority.v1 import admin_pb2_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["Admin"]


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @management(SERVICE)
    async def CreateOrganization(
        self, request: pb.CreateOrganizationRequest, caller: Caller
    ) -> pb.Organization:
        organization = await self.runtime.run(
            self.runtime.organizations.create_organization,
            caller,
            request.name,
            request.display_name,
        )
        return convert.organization(organization)

    @management(SERVICE)
    async def ListOrganizations(
        self, request: pb.ListOrganizationsRequest, caller: Caller
    ) -> pb.ListOrganizationsResponse:
        page = await self.runtime.run(
            self.runtime.organizations.list_organizations,
            caller,
            request.page_size,
            request.page_token,
        )
        return pb.ListOrganizationsResponse(
            organizations=[convert.organization(item) for item in page.items],
            next_page_token=page.next_page_token,
        )

    @management(SERVICE)
    async def CreatePrincipal(
        self, request: pb.CreatePrincipalRequest, caller: Caller
    ) -> pb.Principal:
        kind = convert.principal_kind(request.kind, request.kind_name)
        principal = await self.runtime.run(
            self.runtime.organizations.create_principal, caller, request.name, kind
        )
        return convert.principal(principal)

    @management(SERVICE)
    async def AddMember(self, request: pb.AddMemberRequest, caller: Caller) -> pb.Membership:
        role = convert.role(request.role, request.role_name)
        membership = await self.runtime.run(
            self.runtime.organizations.add_member,
            caller,
            request.organization,
            request.principal,
            role,
        )
        return convert.membership(membership)

    @management(SERVICE)
    async def RemoveMember(
        self, request: pb.RemoveMemberRequest, caller: Caller
    ) -> pb.RemoveMemberResponse:
        revoked = await self.runtime.run(
            self.runtime.organizations.remove_member,
            caller,
            request.organization,
            request.principal,
        )
        return pb.RemoveMemberResponse(revoked_token_ids=revoked)

    @management(SERVICE)
    async def ListMembers(
        self, request: pb.ListMembersRequest, caller: Caller
    ) -> pb.ListMembersResponse:
        members = await self.runtime.run(
            self.runtime.organizations.list_members, caller, request.organization
        )
        return pb.ListMembersResponse(members=[convert.membership(item) for item in members])

    @management(SERVICE)
    async def GetCacheStats(
        self, request: pb.GetCacheStatsRequest, caller: Caller
    ) -> pb.CacheStats:
        await self.runtime.run(
            self.runtime.organizations.require_global_admin, caller, "read cache stats"
        )
        return convert.cache_stats(self.runtime.validator.stats())

    @management(SERVICE)
    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, caller: Caller
    ) -> pb.ListAuditEventsResponse:
        page = await self.runtime.run(
            self.runtime.audit.list_events,
            caller,
            convert.audit_filter(request),
            request.page_size,
            request.page_token,
        )
        return pb.ListAuditEventsResponse(
            events=[convert.audit_event(item) for item in page.items],
            next_page_token=page.next_page_token,
        )

    @management(SERVICE)
    async def RotateSigningKey(
        self, request: pb.RotateSigningKeyRequest, caller: Caller
    ) -> pb.RotateSigningKeyResponse:
        rotated = await self.runtime.run(self.runtime.signing.rotate, caller)
        return pb.RotateSigningKeyResponse(kid=rotated.kid, retired_kid=rotated.retired_kid or "")
