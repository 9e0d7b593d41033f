"""The aggregator's side of plan submission: sign batches of plans and submit them to the CMB.

The bridge submits every plan it dispatches. Routine plans wait for their verdict (`submit`,
then dispatch the accepted ones); response-DSR plans answering a dispatched event go out at once
and are submitted alongside (`immediate` says which, from the CMB's policy for this aggregator,
read once with `policy`). The wire format and signature are `vtn.cmb.signing`'s.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final

import aiohttp
from pydantic import TypeAdapter, ValidationError

from ven.records import Purpose
from vtn.cmb.records import Verdict
from vtn.cmb.signing import Item, PrivateKey, encode
from vtn.cmb.store import Judged, Release

from .models import Plan

_VERDICT: Final = TypeAdapter(Verdict)


class CmbError(Exception):
    """Submission failed; `retryable` says whether the same batch may be sent again."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class CmbAuthError(CmbError):
    """The CMB does not accept us (401/403): unknown aggregator, wrong key or certificate."""


class CmbInvalid(CmbError):
    """The CMB refused the batch as malformed or too large (400/413): a bug of ours."""


class CmbUnavailable(CmbError):
    """The CMB could not be reached or could not record the batch (retryable)."""


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _nonce() -> str:
    return uuid.uuid4().hex


def immediate(plan: Plan, program: str | None, wait_programs: Sequence[str]) -> bool:
    """Whether a plan may be dispatched before its verdict: response DSR answering a dispatched
    event of a program the CMB's policy does not hold back."""
    return (plan.purpose is Purpose.RESPONSE and plan.event_id is not None
            and program not in wait_programs)


@dataclass
class CmbClient:
    url: str  # the CMB's (VTN's) base URL, e.g. https://cmb.example:8443
    aggregator: str
    key: PrivateKey  # ECDSA P-256 or RSA, its public half registered at the CMB
    session: aiohttp.ClientSession  # the caller's: carries the mutual-TLS client certificate
    batch_size: int = 1000  # plans per request
    timeout: float = 10.0  # seconds per request
    clock: Callable[[], datetime] = _utcnow
    new_nonce: Callable[[], str] = _nonce

    async def submit(self, items: Sequence[Item]) -> list[Judged]:
        """Submit plans in order, `batch_size` per request; one verdict per plan, in order.

        Raises:
            CmbAuthError, CmbInvalid: not retryable. CmbUnavailable: retry the same plans.
        """
        out: list[Judged] = []
        for i in range(0, len(items), self.batch_size):
            chunk = items[i:i + self.batch_size]
            body = encode(self.aggregator, chunk, key=self.key, now=self.clock(),
                          nonce=self.new_nonce())
            answer = await self._request("POST", "/api/cmb/plans", body)
            try:
                out += [Judged(verdict=_VERDICT.validate_python(v), release=Release(v["release"]))
                        for v in answer["verdicts"]]
            except (ValidationError, KeyError, TypeError, ValueError) as exc:
                raise CmbInvalid(f"the CMB's answer is not a list of verdicts: {exc}",
                                 retryable=False) from None
            if len(out) != i + len(chunk):
                raise CmbInvalid("the CMB answered a different number of verdicts",
                                 retryable=False)
        return out

    async def policy(self) -> tuple[str, ...]:
        """The programs whose response plans must wait for their verdict."""
        answer = await self._request("GET", f"/api/cmb/policy/{self.aggregator}", None)
        programs = answer.get("wait_programs") if isinstance(answer, dict) else None
        if not isinstance(programs, list):
            raise CmbInvalid("the CMB's policy has no wait_programs", retryable=False)
        return tuple(str(p) for p in programs)

    async def _request(self, method: str, path: str, body: bytes | None) -> Any:
        try:
            async with self.session.request(
                    method, self.url.rstrip("/") + path, data=body,
                    headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CmbUnavailable(f"cannot reach the CMB at {self.url}: {exc!r}",
                                 retryable=True) from None
        if status in (401, 403):
            raise CmbAuthError(f"{status}: {text}", status=status, retryable=False)
        if status in (400, 404, 413, 422):
            raise CmbInvalid(f"{status}: {text}", status=status, retryable=False)
        if status != 200:
            raise CmbUnavailable(f"{status}: {text}", status=status, retryable=True)
        try:
            return json.loads(text)
        except ValueError:
            raise CmbInvalid("the CMB's answer is not JSON", retryable=False) from None


@dataclass
class CmbReviewer:
    """The bridge's view of the CMB: one client per aggregator (the plans' issuer), all signed
    with the aggregator operator's key; each aggregator's wait list read once."""

    url: str
    key: PrivateKey
    session: aiohttp.ClientSession
    timeout: float = 10.0
    clock: Callable[[], datetime] = _utcnow  # signs the batches: the bridge's clock
    _clients: dict[str, CmbClient] = field(default_factory=dict)
    _wait: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def _client(self, aggregator: str) -> CmbClient:
        if aggregator not in self._clients:
            self._clients[aggregator] = CmbClient(self.url, aggregator, self.key, self.session,
                                                  timeout=self.timeout, clock=self.clock)
        return self._clients[aggregator]

    async def immediate(self, plan: Plan, program: str | None) -> bool:
        """Whether the plan may go out before its verdict (see `immediate`).

        Raises:
            CmbError: the policy could not be read.
        """
        if plan.issuer not in self._wait:
            self._wait[plan.issuer] = await self._client(plan.issuer).policy()
        return immediate(plan, program, self._wait[plan.issuer])

    async def review(self, aggregator: str, items: Sequence[Item]) -> list[Verdict]:
        """The CMB's verdicts on `items`, in order.

        Raises:
            CmbError: not judged (`retryable` says whether to send them again).
        """
        return [j.verdict for j in await self._client(aggregator).submit(items)]
