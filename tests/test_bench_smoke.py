"""The benchmarks run end to end in quick mode and produce well-formed results.

No timing is asserted: rates and latencies depend on the machine. Servers run on 127.0.0.1.
"""

from __future__ import annotations

from bench import event_latency, poll_rate


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
