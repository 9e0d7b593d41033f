"""The SAPC channel: LIMIT plans become signed DUIS service requests sent through the DCC
(domain.md section 5; the wire format is `bridge.duis`, a simulator is `bridge.sim.dcc`).

A dispatch becomes SRV 7.12 (only when the plan's random delay differs from what this driver last
set on the device) and then one SRV 7.13 per step, each critical: request, pre-command, signed
pre-command, response: four messages. Counters come from the plan's sequence and step index, so a
re-delivered dispatch carries the same counters and the device refuses them as replays: that
refusal is read as "already applied", and the dispatch takes effect once.

`Device.reach` is the SAPC's EUI-64. Errors: no answer within `timeout` per HTTP call ->
DeviceUnavailable; DCC throttling or unreachable -> ChannelError(retryable=True); any refusal by
the DCC or the device -> ChannelError(retryable=False).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec

from .channel import ChannelError, Delivery, DeviceUnavailable, Dispatch
from .duis import (
    CANCELLATION_DATE, SERVICES_PATH, Body, DuisError, LimitApcLevel, RequestId, Response,
    ResponseCode, ServiceRequest, decode_response, encode_signed, frame, offset_request,
    plan_counter, plan_requests, sign_pre_command)
from .models import Channel


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Exchange:
    """What a run of requests cost and which the device acknowledged."""

    request_ids: list[str] = field(default_factory=list)
    messages: int = 0  # both ways
    already_applied: int = 0  # refused as replays: sent before

    @property
    def detail(self) -> str:
        ids = " ".join(self.request_ids)
        return f"{ids} (already applied: {self.already_applied})" if self.already_applied else ids


class SapcDriver:
    channel = Channel.SAPC

    def __init__(self, *, user_eui: str, key: ec.EllipticCurvePrivateKey, dcc_url: str,
                 timeout: float = 30.0, controller: int = 1,
                 session: aiohttp.ClientSession | None = None,
                 clock: Callable[[], datetime] = _now) -> None:
        self.user_eui = user_eui
        self.controller = controller  # the Auxiliary Controller the loads hang on
        self._key = key
        self._url = dcc_url.rstrip("/") + SERVICES_PATH
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None
        self._clock = clock
        self._offsets: dict[str, Body] = {}  # device EUI-64 -> the 7.12 body last set

    async def deliver(self, dispatch: Dispatch) -> Delivery:
        plan, eui = dispatch.plan, dispatch.device.reach
        sent_at = self._clock()
        try:
            offset = offset_request(plan, self.user_eui, eui)
        except DuisError as exc:
            raise ChannelError(f"plan {plan.plan_id}: {exc}", retryable=False) from None
        steps = plan_requests(dispatch, self.user_eui, eui, plan_counter(plan) + 1,
                              self.controller)
        exchange = Exchange()
        if self._offsets.get(eui) != offset.body:
            await self._send(offset, exchange)
            self._offsets[eui] = offset.body
        for request in steps:
            await self._send(request, exchange)
        return Delivery(key=dispatch.key, plan_id=plan.plan_id,
                        device_id=dispatch.device.device_id, channel=self.channel,
                        messages=exchange.messages, sent_at=sent_at, acked_at=self._clock(),
                        detail=exchange.detail)

    async def limit(self, device_eui: str, limit: LimitApcLevel, *, counter: int,
                    execution: datetime | None = None) -> Exchange:
        """SRV 7.16 Limit APC Level (needs the Load Controller role)."""
        return await self._run(ServiceRequest(
            request_id=self._request_id(device_eui, counter), body=limit, execution=execution))

    async def cancel(self, device_eui: str, body: Body, *, counter: int) -> Exchange:
        """Cancel the 7.13 or 7.16 this driver sent with `body`: it is sent again with
        ExecutionDateTime 3000-12-31 and a fresh `counter`."""
        return await self._run(ServiceRequest(request_id=self._request_id(device_eui, counter),
                                              body=body, execution=CANCELLATION_DATE))

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _request_id(self, device_eui: str, counter: int) -> RequestId:
        try:
            return RequestId(self.user_eui, device_eui, counter)
        except DuisError as exc:
            raise ChannelError(str(exc), retryable=False) from None

    async def _run(self, request: ServiceRequest) -> Exchange:
        exchange = Exchange()
        await self._send(request, exchange)
        return exchange

    async def _send(self, request: ServiceRequest, exchange: Exchange) -> None:
        response = await self._post(frame(request, self._key), exchange)
        if request.service.critical and response.code is ResponseCode.PRE_COMMAND:
            if response.pre_command is None:
                raise ChannelError(f"{request.request_id}: pre-command missing", retryable=False)
            try:
                signed = sign_pre_command(request, response.pre_command, self._key)
            except DuisError as exc:
                raise ChannelError(f"{request.request_id}: DCC pre-command refused: {exc}",
                                   retryable=False) from None
            response = await self._post(encode_signed(signed), exchange)
        rid = str(request.request_id)
        match response.code:
            case ResponseCode.SUCCESS:
                exchange.request_ids.append(rid)
            case ResponseCode.REPLAYED_COUNTER:
                exchange.request_ids.append(rid)
                exchange.already_applied += 1
            case ResponseCode.THROTTLED:
                raise ChannelError(f"{rid}: DCC throttled: {response.detail}")
            case code:
                raise ChannelError(f"{rid}: {code.name} ({code.value}) {response.detail}",
                                   retryable=False)

    async def _post(self, body: bytes, exchange: Exchange) -> Response:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        exchange.messages += 1
        try:
            async with self._session.post(
                    self._url, data=body, timeout=self._timeout,
                    headers={"Content-Type": "application/xml"}) as http:
                status, data = http.status, await http.read()
        except TimeoutError:
            raise DeviceUnavailable(
                f"no answer from the DCC within {self._timeout.total} s") from None
        except aiohttp.ClientError as exc:
            raise ChannelError(f"DCC unreachable: {exc}") from None
        exchange.messages += 1
        try:
            return decode_response(data)
        except DuisError:
            raise ChannelError(f"DCC answered HTTP {status} without a DUIS response",
                               retryable=status >= 500) from None
