"""Resolve an event's targets to the VENs it concerns, and narrow them per VEN."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from oadr.messages import Target

from .records import EventRecord, VenRecord


def audience(targets: Target, market_context: str, vens: Iterable[VenRecord]) -> list[str]:
    """VEN IDs an event reaches: any VEN named, in a named group, owning a named resource or
    belonging to a named party; with no targets, every VEN enrolled in the program."""
    chosen = []
    for ven in vens:
        if targets.is_empty():
            hit = market_context in ven.programs
        else:
            hit = (ven.ven_id in targets.ven_ids
                   or bool(set(ven.groups) & set(targets.group_ids))
                   or bool(set(ven.resources) & set(targets.resource_ids))
                   or (ven.party_id is not None and ven.party_id in targets.party_ids))
        if hit:
            chosen.append(ven.ven_id)
    return chosen


def narrowed(targets: Target, ven: VenRecord) -> Target:
    """The targets one VEN may see: its own venID and its own groups, resources and party.

    A VEN never learns which other VENs an event reaches, and the certification rule allows at
    most one venID per target.
    """
    if targets.is_empty():
        return Target(ven_ids=(ven.ven_id,))
    return Target(
        ven_ids=(ven.ven_id,) if ven.ven_id in targets.ven_ids else (),
        group_ids=tuple(g for g in targets.group_ids if g in ven.groups),
        resource_ids=tuple(r for r in targets.resource_ids if r in ven.resources),
        party_ids=tuple(p for p in targets.party_ids if p == ven.party_id),
    )


def live_events_reaching(ven: VenRecord, events: Iterable[EventRecord], now: datetime) -> list[str]:
    """IDs of events not cancelled and not over whose targets reach `ven` (for a VEN that
    registered, or joined a program, group or resource, after the events were created)."""
    return [r.event.event_id for r in events
            if not r.cancelled
            and (r.event.active_period.end is None or r.event.active_period.end > now)
            and audience(r.event.targets, r.event.market_context, [ven])]
