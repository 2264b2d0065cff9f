"""TokenAuthority servicer: parse the request, call the domain, map the result."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc

from authority.api import convert, watch
from authority.api.errors import (
    Context,
    Reauthenticate,
    fail,
    keyed,
    log_call,
    management,
    peer_of,
    permission_of,
    public,
    refusal_of,
    streaming,
)
from authority.api.runtime import Runtime
from authority.domain.exchange import KeyHolder
from authority.domain.policy import Caller
from authority.domain.signing import jwks_json
from authority.domain.tokens import IssueTokenCommand
from authority.domain.validation import (
    check_batch_size,
    check_ping_payload,
    check_request_id,
)
from authority.v1 import token_authority_pb2 as pb
from authority.v1 import token_authority_pb2_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["TokenAuthority"]
EXCHANGE_KEY = permission_of(SERVICE, "ExchangeKey")
# Answers a stream may hold before it stops reading requests (back-pressure).
STREAM_BUFFER = 1024


class TokenAuthorityServicer(token_authority_pb2_grpc.TokenAuthorityServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @management(SERVICE)
    async def IssueToken(
        self, request: pb.IssueTokenRequest, caller: Caller
    ) -> pb.IssueTokenResponse:
        expiry = request.WhichOneof("expiry")
        command = IssueTokenCommand(
            organization=request.organization,
            label=request.label,
            description=request.description,
            subject=request.subject,
            scopes=list(request.scopes),
            scope_profile=convert.profile_name(request.scope_profile),
            expires_at=(
                convert.to_datetime(request.expires_at, "expires_at")
                if expiry == "expires_at"
                else None
            ),
            ttl=(
                convert.to_timedelta(request.ttl.seconds, request.ttl.nanos, "ttl")
                if expiry == "ttl"
                else None
            ),
            properties=dict(request.properties),
        )
        issued = await self.runtime.run(self.runtime.tokens.issue_token, caller, command)
        return pb.IssueTokenResponse(token=convert.token(issued.record), secret=issued.secret)

    # The Validate methods answer serialized messages (the rendered answers, as the thin path
    # sends them: byte for byte the same on both servers), sent as they are (add_to_server).
    @public(SERVICE)
    async def Validate(  # type: ignore[override]
        self, request: pb.ValidateRequest, context: Context
    ) -> bytes:
        validator = self.runtime.validator
        verdict = validator.validate_now(request.token, request.permission)
        if verdict is None:
            verdict = await validator.validate_missed(request.token, request.permission)
        return convert.rendered_verdict(verdict, request.request_id)

    @public(SERVICE)
    async def ValidateBatch(  # type: ignore[override]
        self, request: pb.ValidateBatchRequest, context: Context
    ) -> bytes:
        check_batch_size(len(request.requests), self.runtime.batch_max)
        verdicts = await self.runtime.validator.validate_batch(request.requests)
        return convert.rendered_batch(verdicts, request.requests)

    async def ValidateStream(  # type: ignore[override]
        self, request_iterator: AsyncIterator[pb.ValidateRequest], context: Context
    ) -> AsyncIterator[bytes]:
        """Answers as soon as each is known: cached tokens at once, store reads when done.

        Answers to tokens that need a store read may overtake earlier ones, so a caller
        matches them by request_id; a slow read never holds up the stream behind it.
        """
        started = time.perf_counter()
        method = SERVICE.methods_by_name["ValidateStream"].full_name
        validator = self.runtime.validator
        answers: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=STREAM_BUFFER)
        reads: set[asyncio.Task[None]] = set()
        count = 0

        async def read_then_answer(item: pb.ValidateRequest) -> None:
            verdict = await validator.validate_missed(item.token, item.permission)
            await answers.put(convert.rendered_verdict(verdict, item.request_id))

        async def pump() -> None:
            nonlocal count
            try:
                async for item in request_iterator:
                    count += 1
                    check_request_id(item.request_id)  # before a read could swallow it
                    verdict = validator.validate_now(item.token, item.permission)
                    if verdict is not None:
                        await answers.put(convert.rendered_verdict(verdict, item.request_id))
                    else:
                        task = asyncio.create_task(read_then_answer(item))
                        reads.add(task)
                        task.add_done_callback(reads.discard)
                if reads:
                    await asyncio.gather(*reads)
                await answers.put(None)
            except asyncio.CancelledError:
                raise  # the call ended: nobody is left to read an answer
            except Exception as error:  # surfaced to the caller below
                await answers.put(error)

        pumping = asyncio.create_task(pump())
        try:
            while True:
                answer = await answers.get()
                if answer is None:
                    break
                if isinstance(answer, BaseException):
                    raise answer
                yield answer
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the store failed under a read: a status, not UNKNOWN
            await fail(context, method, error, started)
        finally:
            pumping.cancel()
            for task in list(reads):
                task.cancel()
        log_call(method, "OK", started, "", logging.DEBUG, messages=count)

    @management(SERVICE)
    async def GetToken(self, request: pb.GetTokenRequest, caller: Caller) -> pb.Token:
        record = await self.runtime.run(self.runtime.tokens.get_token, caller, request.token_id)
        return convert.token(record)

    @management(SERVICE)
    async def ListTokens(
        self, request: pb.ListTokensRequest, caller: Caller
    ) -> pb.ListTokensResponse:
        page = await self.runtime.run(
            self.runtime.tokens.list_tokens,
            caller,
            request.organization,
            request.page_size,
            request.page_token,
            request.include_revoked,
        )
        return pb.ListTokensResponse(
            tokens=[convert.token(record) for record in page.items],
            next_page_token=page.next_page_token,
        )

    @management(SERVICE)
    async def RevokeToken(self, request: pb.RevokeTokenRequest, caller: Caller) -> pb.Token:
        record = await self.runtime.run(self.runtime.tokens.revoke_token, caller, request.token_id)
        return convert.token(record)

    @streaming(SERVICE)
    async def WatchEvents(
        self, request: pb.WatchEventsRequest, caller: Caller, authenticate: Reauthenticate
    ) -> AsyncGenerator[pb.TokenEvent, None]:
        """The organisation's token events after request.after_sequence, then live."""
        events = watch.follow(
            self.runtime,
            caller,
            authenticate,
            request.organization,
            request.after_sequence,
            request.mark_caught_up,
        )
        async with contextlib.aclosing(events):
            async for watched in events:
                if isinstance(watched, watch.CaughtUp):
                    yield pb.TokenEvent(
                        sequence=watched.sequence, kind=pb.TOKEN_EVENT_KIND_CAUGHT_UP
                    )
                else:
                    yield convert.token_event(watched)

    @public(SERVICE)
    async def GetSigningKeys(
        self, request: pb.GetSigningKeysRequest, context: Context
    ) -> pb.GetSigningKeysResponse:
        """From this process's key set in memory: no store read."""
        keys = self.runtime.signing.published()
        return pb.GetSigningKeysResponse(
            keys=[pb.JsonWebKey(**key.as_dict()) for key in keys], jwks_json=jwks_json(keys)
        )

    @keyed(SERVICE)
    async def ExchangeKey(
        self, request: pb.ExchangeKeyRequest, context: Context, request_id: str
    ) -> pb.ExchangeKeyResponse:
        """The key is the credential (no bearer); answered from the Validate cache. The
        exchange is put in the audit trail before it is answered; a refusal like a refused
        management call's (by the key once it is known, within its organisation's allowance)."""
        runtime = self.runtime
        peer = peer_of(context)
        holder: KeyHolder | None = None
        try:
            ttl = (
                convert.to_timedelta(request.ttl.seconds, request.ttl.nanos, "ttl")
                if request.HasField("ttl")
                else None
            )
            holder = await runtime.access_tokens.present(request.key, peer, request_id)
            issued = await runtime.access_tokens.exchange(
                holder,
                list(request.scopes),
                ttl,
                request.audience,
                lambda event: runtime.run(runtime.audit.record, event),
            )
        except Exception as error:
            caller = holder.caller if holder is not None else None
            refusal = refusal_of(EXCHANGE_KEY, error, caller, peer, request_id)
            if refusal is not None:
                await runtime.record_refusal(refusal)
            raise
        return pb.ExchangeKeyResponse(**convert.access_token(issued))

    @public(SERVICE)
    async def RefreshToken(
        self, request: pb.RefreshTokenRequest, context: Context
    ) -> pb.RefreshTokenResponse:
        """No store read when the parent key is cached, and no write ever: a refresh is not
        in the audit trail (the exchange that began its chain is)."""
        issued = await self.runtime.access_tokens.refresh(request.access_token)
        return pb.RefreshTokenResponse(**convert.access_token(issued))

    @public(SERVICE)
    async def Ping(self, request: pb.PingRequest, context: Context) -> pb.PingResponse:
        check_ping_payload(request.payload)
        return pb.PingResponse(payload=request.payload)


# The methods whose servicer answers bytes: sent as they are, not serialized again.
AS_IS = frozenset({"Validate", "ValidateBatch", "ValidateStream"})
# A method's handler factory by (client streaming, server streaming).
_HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_to_server(servicer: TokenAuthorityServicer, server: grpc.aio.Server) -> None:
    """As the generated add_TokenAuthorityServicer_to_server, but the AS_IS methods' answers
    go out as the servicer made them."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in SERVICE.methods:
        request = getattr(pb, method.input_type.name)
        response = getattr(pb, method.output_type.name)
        serialize = _as_is if method.name in AS_IS else response.SerializeToString
        kind = _HANDLER_KINDS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(
            getattr(servicer, method.name),
            request_deserializer=request.FromString,
            response_serializer=serialize,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


def _as_is(answer: bytes) -> bytes:
    return answer
