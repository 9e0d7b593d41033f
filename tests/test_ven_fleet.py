"""Our VEN fleet against our VTN: registration, events, opts and reports end to end."""

from __future__ import annotations

from datetime import timedelta

from tests.venkit import PROGRAM, running_fleet, ven_spec
from tests.vtnkit import api, running_vtn, simple_event, wait_for

FAST = {"poll_freq": timedelta(seconds=1), "report_granularity": timedelta(seconds=1)}


async def test_fleet_registers_reports_and_answers_events() -> None:
    async with running_vtn(**FAST) as vtn:
        async with running_fleet([ven_spec(vtn.oadr_url, f"agg-{i}") for i in range(3)]) as f:
            vens = await wait_for(lambda: [v for v in vtn.store.list_vens() if v.is_registered]
                                  if len([v for v in vtn.store.list_vens()
                                          if v.is_registered]) == 3 else None,
                                  what="3 registrations")
            ven_ids = [v.ven_id for v in vens]
            status, created = await api(vtn, "POST", "/api/events", simple_event(
                targets={"ven_ids": ven_ids}, start_in=timedelta(minutes=5)))
            assert status == 201, created

            def answered() -> bool:
                ds = vtn.store.deliveries_for_event(created["event_id"])
                return len(ds) == 3 and all(d.acked_mod == 0 for d in ds)

            await wait_for(answered, what="oadrCreatedEvent from every VEN")
            opts = {d.opt_type for d in vtn.store.deliveries_for_event(created["event_id"])}
            assert opts == {"optIn"}
            await wait_for(lambda: all(vtn.store.count_report_values(i) > 0 for i in ven_ids),
                           what="telemetry reports")
            assert "oadrRegisterReport" in f.wire.types("agg-0")
