"""LOAD_DISPATCH: a fleet power target shared across devices, and re-shared when devices fail.

Pure and deterministic: frozen values in, an `Allocation` out; no I/O, no clock, no randomness.
Both functions are O(n) in the number of devices.

Sign convention: every kW here is a change in *import* from the grid. A target of -50 asks the fleet
to import 50 kW less than it does now (turn-down, the usual DSR); +50 asks it to import 50 kW more
(turn-up). Each device's share carries the target's sign. A device offers `flex_down_kw` (how far
its import can fall from where it is now) and `flex_up_kw` (how far it can rise), both >= 0.

Sharing rule: each available device takes a share of the target in proportion to its flexibility in
the target's direction, so every device moves by the same fraction of its flexibility and none
beyond it. When the target exceeds the fleet's flexibility, every device gives all it has and the
rest is reported as shortfall.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bridge.models import Device


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceState:
    device: Device
    available: bool  # online, not overridden by its owner, not opted out
    flex_down_kw: float  # how far its import can fall from `current_kw`
    flex_up_kw: float  # how far its import can rise from `current_kw`
    current_kw: float  # its measured import now (negative: exporting)

    def __post_init__(self) -> None:
        if not (self.flex_down_kw >= 0 and self.flex_up_kw >= 0):  # also refuses NaN
            raise ValueError(f"{self.device.device_id}: flexibility must be >= 0 kW")

    def flex_kw(self, target_kw: float) -> float:
        """Its flexibility in the direction of `target_kw`."""
        return self.flex_down_kw if target_kw < 0 else self.flex_up_kw


@dataclass(frozen=True, slots=True, kw_only=True)
class Share:
    kw: float  # the change in import asked of the device (the target's sign)
    expected_kw: float  # the import it should show while it delivers `kw`


@dataclass(frozen=True, slots=True, kw_only=True)
class Allocation:
    target_kw: float
    shares: Mapping[str, Share]  # by device_id; only devices asked to move
    delivered_kw: float  # the sum of the shares (the target's sign)
    shortfall_kw: float  # >= 0: how much of the target no available flexibility covers
    dropped: tuple[str, ...] = ()  # devices whose earlier share a re-dispatch withdrew


def allocate(target_kw: float, devices: Sequence[DeviceState]) -> Allocation:
    """Share `target_kw` (a change in fleet import, negative = import less) across the available
    devices in proportion to their flexibility in its direction, none beyond its flexibility."""
    return _share(target_kw, abs(target_kw),
                  ((s, 0.0, s.current_kw) for s in devices if s.available), dropped=())


def redispatch(previous: Allocation, states: Sequence[DeviceState], target_kw: float, *,
               deviation_margin: float, in_force: bool = True) -> Allocation:
    """Re-share `target_kw` (measured from the same pre-dispatch fleet total as `previous`'s)
    given the devices' `states` now.

    A device keeps its earlier share while it is available and, once the interval is
    `in_force`, its import is within `deviation_margin` (a fraction of its share: 0.2 = 20 %) of
    what it should be; before that its import says nothing about its share. The share of a
    device that failed, went offline, deviated or is missing from `states` is withdrawn (listed
    in `dropped`) and the gap is shared across the remaining headroom of the kept devices (their
    flexibility from the import their share asks) and the available devices not yet dispatched,
    in proportion to that headroom. A target smaller than the kept shares scales them down alike.

    Raises:
        ValueError: `deviation_margin` is negative, or `target_kw` has the opposite sign of
            `previous.target_kw` (that is a new dispatch: release the old one and `allocate`).
    """
    if not deviation_margin >= 0:
        raise ValueError(f"deviation margin {deviation_margin} must be >= 0")
    if target_kw * previous.target_kw < 0:
        raise ValueError(f"target {target_kw:g} kW reverses the dispatch of "
                         f"{previous.target_kw:g} kW")
    by_id = {s.device.device_id: s for s in states}
    dropped = tuple(device_id for device_id, share in previous.shares.items()
                    if not _keeps(by_id.get(device_id), share,
                                  deviation_margin if in_force else None))
    gone = set(dropped)
    kept = {device_id: share for device_id, share in previous.shares.items()
            if device_id not in gone}
    kept_kw = math.fsum(abs(share.kw) for share in kept.values())
    need = abs(target_kw)
    if math.isclose(need, kept_kw, rel_tol=1e-9):
        # Met already, but for rounding: the kept shares stand exactly, so nothing is re-sent.
        return _result(target_kw, dict(kept), dropped)
    if need <= kept_kw:
        # Enough already: every kept device gives up the same fraction of its share.
        scale = need / kept_kw if kept_kw else 0.0
        return _result(target_kw, {
            device_id: Share(kw=share.kw * scale,
                             expected_kw=share.expected_kw - share.kw * (1 - scale))
            for device_id, share in kept.items() if scale}, dropped)
    candidates = ((state, abs(kept[device_id].kw) if device_id in kept else 0.0,
                   kept[device_id].expected_kw if device_id in kept else state.current_kw)
                  for device_id, state in by_id.items()
                  if state.available and device_id not in gone)
    return _share(target_kw, need - kept_kw, candidates, dropped=dropped)


def _keeps(state: DeviceState | None, share: Share, margin: float | None) -> bool:
    """Available, and (unless `margin` is None: not in force yet) showing its share's import."""
    return (state is not None and state.available
            and (margin is None
                 or abs(state.current_kw - share.expected_kw) <= margin * abs(share.kw)))


def _share(target_kw: float, need: float, candidates: Iterable[tuple[DeviceState, float, float]],
           *, dropped: tuple[str, ...]) -> Allocation:
    """Share `need` (kW, >= 0) across `candidates`: (state, the share it already holds, the import
    it should show for it), in proportion to their flexibility in the target's direction counted
    from that import (a share not yet delivered has used up part of it)."""
    sign = -1.0 if target_kw < 0 else 1.0
    pool = [(state, held, expected,
             max(0.0, state.flex_kw(target_kw) - sign * (expected - state.current_kw)))
            for state, held, expected in candidates]
    flex = math.fsum(f for _, _, _, f in pool)
    fraction = min(1.0, need / flex) if flex else 0.0
    shares: dict[str, Share] = {}
    for state, held, expected, f in pool:
        extra = sign * f * fraction
        if held or extra:
            shares[state.device.device_id] = Share(kw=sign * held + extra,
                                                   expected_kw=expected + extra)
    return _result(target_kw, shares, dropped)


def _result(target_kw: float, shares: dict[str, Share], dropped: tuple[str, ...]) -> Allocation:
    delivered = math.fsum(share.kw for share in shares.values())
    # Rounding in the proportional split must not show up as a shortfall.
    shortfall = abs(target_kw) - abs(delivered)
    if shortfall <= 1e-9 * max(1.0, abs(target_kw)):
        shortfall = 0.0
    return Allocation(target_kw=target_kw, shares=shares, delivered_kw=delivered,
                      shortfall_kw=shortfall, dropped=dropped)
