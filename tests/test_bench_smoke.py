"""The benchmarks run end to end in quick mode and produce well-formed results.

No timing is asserted: rates and latencies depend on the machine. Servers run on 127.0.0.1.
"""

from __future__ import annotations

from bench import event_latency, fleet_footprint, poll_rate


async def test_poll_rate_quick_measures_every_server_and_mode() -> None:
    opts = poll_rate.parse_args(["--quick", "--seconds", "1", "--warmup", "0.3", "--vens", "20",
                                 "--concurrency", "4"])
    results = await poll_rate.run(opts)

    runs = {(r.server, r.mode) for r in results}
    assert runs == {(s, m) for s in ("adrgate", "openleadr") for m in ("unsigned", "ecdsa", "rsa")}
    for r in results:
        assert r.ok > 0 and r.rate > 0, r
        assert r.failed == {}, r
    assert set(poll_rate.ratios(results)) == {"unsigned", "ecdsa", "rsa"}
    assert "| adrgate | rsa |" in poll_rate.report(results)


async def test_event_latency_quick_every_ven_acknowledges() -> None:
    opts = event_latency.parse_args(["--quick", "--vens", "30", "--period", "1"])
    result = await event_latency.run(opts)

    assert result.acknowledged == result.vens == 30
    assert result.answered == 30
    assert result.all_s is not None and result.all_s >= result.p95_s >= result.p50_s > 0
    assert result.poll_errors == 0
    assert result.polls >= 30


def test_fleet_footprint_quick_measures_both_stacks() -> None:
    results = fleet_footprint.run(fleet_footprint.parse_args(["--quick"]))

    assert [r.stack for r in results] == ["ours", "openleadr"]
    for r in results:
        assert r.registered == r.vens == 5, r
        assert r.polls > 0 and r.messages >= r.polls, r
        assert r.cpu_s > 0 and r.cpu_per_1000_polls > 0 and r.window_s > 0, r
        assert 0 < r.rss_base_kb <= r.peak_kb and 0 < r.rss_kb <= r.peak_kb, r
    assert "cpu" in fleet_footprint.ratios(results)
    assert "| 0 | openleadr | 5/5 |" in fleet_footprint.report(results)


def test_bridge_plans_quick_plans_every_available_device() -> None:
    from bench import bridge_plans

    rounds = bridge_plans.run(bridge_plans.parse_args(["--devices", "300", "--rounds", "1"]))
    assert rounds[0].devices == 300 and 250 < rounds[0].plans <= 300
    assert rounds[0].bytes_per_device > 0 and rounds[0].reference_seconds > 0
    assert "| 300 |" in bridge_plans.report(rounds)


def test_bridge_dispatch_quick_signs_verifies_and_delivers_every_dispatch() -> None:
    from bench import bridge_dispatch

    results = bridge_dispatch.run(bridge_dispatch.parse_args(["--quick", "--dispatches", "50"]))

    assert [f.frames for f in results.frames] == [2 * 48]  # two plans of 48 steps, one round
    for f in results.frames:
        assert f.frame_rate > 0 and f.check_rate > 0 and f.sign_s > 0 and f.verify_s > 0, f
        assert f.frame_bytes > 0, f
    assert sorted(s.stack for s in results.streams) == ["bare", "worker"]
    for s in results.streams:
        assert s.delivered == s.dispatches == 50 and s.failed == 0, s
        assert s.rate > 0 and s.payload_bytes > 0, s
    assert set(bridge_dispatch.ratios(results)) == {
        "frame_time_per_sign_time", "check_time_per_verify_time", "worker_rate_per_bare_rate"}
    assert "| 0 | worker | 50 | 50 | 0 |" in bridge_dispatch.report(results)


def test_cmb_validation_quick_judges_every_plan_and_runs_the_monitors_through_a_day() -> None:
    from bench import cmb_validation

    results = cmb_validation.run(cmb_validation.parse_args(["--quick", "--seconds", "0.2"]))

    i, m = results.inline, results.monitors
    assert i.plans == 2000 and i.rate > 0 and 0 < i.rejected < i.plans
    assert 0 < i.service_p50_ms <= i.service_p99_ms and i.latency_p99_ms >= i.latency_p50_ms > 0
    assert (m.devices, m.changes, m.ticks) == (2000, 4000, 1440) and m.alerts == 0
    assert m.observe_s > 0 and m.tick_s > 0 and m.bytes_per_device > 0
    assert "| 2,000 | 4,000 |" in cmb_validation.report(results)


async def test_push_latency_quick_every_ven_answers_in_both_modes() -> None:
    from bench import event_latency, push_latency

    rows = await push_latency.run([3], event_latency.Options(period=1.0, timeout=20.0))
    assert [(r.mode, r.result.vens, r.result.acknowledged) for r in rows] == [
        ("push", 3, 3), ("pull", 3, 3)]
    assert all(r.result.all_s is not None and r.result.poll_errors == 0 for r in rows)
    assert "| 3 | push |" in push_latency.report(rows)
