"""The measurements: WebSocket fan-out, long-poll, REST, snapshot build, reconnect storm.

Each returns plain data (lists of figures per round and broadcast); the
summaries and the targets are computed in :mod:`tests.bench.report`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sponsord.gcpause import gc_paused
from sponsord.patreon import MEMBER_QUERY, parse_members
from sponsord.roster import build_supporters
from sponsord.simulator import MEMBERS_PATH, Simulator
from sponsord.snapshot import Snapshot

from .procs import Server, free_port, python
from .refservers import bare_etag
from .swarm import LoadGen, Swarm, open_polls
from .targets import Sponsord, Target

if TYPE_CHECKING:
    from .run import Bench

#: Idle time before RSS is read, so the last writes and handshakes have settled.
SETTLE = 1.0


def _quiet_gc() -> None:
    """Keep the swarm's own garbage collector out of the timings.

    Thousands of live connections make every full collection long; frozen,
    they are no longer traversed (they are still freed when closed).
    """
    gc.collect()
    gc.freeze()


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``xs``."""
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def timing(t0: float, times: list[float], expected: int) -> dict[str, Any]:
    """Latency percentiles and spread (ms) of one broadcast's receipts."""
    lat = [(t - t0) * 1000 for t in times]
    return {
        "received": len(times),
        "expected": expected,
        "p50_ms": round(pct(lat, 0.50), 2),
        "p95_ms": round(pct(lat, 0.95), 2),
        "p99_ms": round(pct(lat, 0.99), 2),
        "first_ms": round(min(lat), 2) if lat else None,
        "spread_ms": round((max(times) - min(times)) * 1000, 2) if times else None,
    }


async def _broadcast(bench: Bench, target: Target, swarm: Swarm, timeout: float) -> dict[str, Any]:
    """Publish one new version on ``target`` and time its arrival at every client."""
    wait = target.last_trigger + target.min_gap - time.perf_counter()
    if wait > 0:
        await asyncio.sleep(wait)
    before = await target.metrics(bench.http) if isinstance(target, Sponsord) else None
    swarm.expect(target.version + 1)
    cpu0, own0 = target.server.cpu_ns(), time.thread_time()
    t0 = target.last_trigger = time.perf_counter()
    trigger = asyncio.create_task(target.trigger(bench.http))
    times = await swarm.wait(timeout)
    await trigger
    target.version += 1
    result = timing(t0, times, swarm.expected)
    result["server_cpu_ms"] = round((target.server.cpu_ns() - cpu0) / 1e6, 1)
    result["swarm_cpu_ms"] = round((time.thread_time() - own0) * 1000, 1)
    if before is not None:
        assert isinstance(target, Sponsord)
        await asyncio.sleep(0.05)
        after = await target.metrics(bench.http)

        def delta(key: str) -> float:
            return after.get(key, 0.0) - before.get(key, 0.0)

        fetches = delta("sponsord_upstream_seconds_count") or 1.0
        result["fetch_ms"] = round(delta("sponsord_upstream_seconds_sum") / fetches * 1000, 2)
        result["publish_ms"] = round(delta("sponsord_broadcast_seconds_sum") * 1000, 2)
    await asyncio.sleep(0.2)
    return result


async def websocket(
    bench: Bench, sizes: list[int], *, deflate: bool, rounds: int | None = None
) -> dict[str, Any]:
    """Connect, memory and broadcast timing per server and size, servers interleaved."""
    args = bench.args
    rounds = rounds or args.rounds
    out: dict[str, Any] = {}
    timeout = 60.0 if deflate else 20.0
    for n in sizes:
        await bench.restart_all()
        per: dict[str, Any] = {
            t.name: {"connect_s": [], "rss_kib_per_conn": [], "broadcasts": []} for t in bench.targets
        }
        for r in range(rounds):
            order = bench.targets[r % 3 :] + bench.targets[: r % 3]
            for target in order:
                rec = per[target.name]
                # Warm the process once (imports, first allocations) before the first figure.
                if r == 0:
                    warm = Swarm("127.0.0.1", target.port, target.path, deflate=deflate)
                    await warm.connect(50)
                    await warm.close()
                    await asyncio.sleep(0.3)
                swarm = Swarm("127.0.0.1", target.port, target.path, deflate=deflate)
                rss0 = target.server.rss()
                rec["connect_s"].append(round(await swarm.connect(n), 3))
                _quiet_gc()
                await asyncio.sleep(SETTLE)
                rec["rss_kib_per_conn"].append(round((target.server.rss() - rss0) / n, 2))
                rec["compressed"] = swarm.compressed
                for _ in range(args.broadcasts):
                    rec["broadcasts"].append(await _broadcast(bench, target, swarm, timeout))
                await swarm.close()
                await asyncio.sleep(0.3)
                last = rec["broadcasts"][-1]
                print(
                    f"  ws{' deflate' if deflate else ''} n={n} round {r + 1}/{rounds} {target.name:10s}"
                    f" connect {rec['connect_s'][-1]:.2f}s rss/conn {rec['rss_kib_per_conn'][-1]:.1f} KiB"
                    f" spread {last['spread_ms']} ms p99 {last['p99_ms']} ms"
                    f" cpu server {last['server_cpu_ms']} swarm {last['swarm_cpu_ms']} ms",
                    flush=True,
                )
        out[str(n)] = per
    return out


async def longpoll(bench: Bench, n: int, rounds: int = 3) -> dict[str, Any]:
    """``n`` held polls answered by one change: spread, latency, memory per waiter."""
    sponsord = bench.sponsord
    assert sponsord is not None
    await sponsord.server.stop()
    await sponsord.server.start()
    await asyncio.sleep(0.5)
    out: dict[str, Any] = {"rounds": [], "rss_kib_per_waiter": []}
    for r in range(rounds):
        answers: list[tuple[int, int, float]] = []

        def on_answer(
            status: int, version: int, t: float, answers: list[tuple[int, int, float]] = answers
        ) -> None:
            answers.append((status, version, t))

        since = sponsord.version
        rss0 = sponsord.server.rss()
        path = f"/v1/supporters/poll?since={since}&wait=55"
        transports = await open_polls("127.0.0.1", sponsord.port, path, n, on_answer)
        _quiet_gc()
        deadline = time.monotonic() + 60
        while (await sponsord.health(bench.http)).get("clients", {}).get("longpoll", 0) < n:  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise TimeoutError("the long-polls were not all held")
            await asyncio.sleep(0.1)
        await asyncio.sleep(SETTLE)
        out["rss_kib_per_waiter"].append(round((sponsord.server.rss() - rss0) / n, 2))
        wait = sponsord.last_trigger + sponsord.min_gap - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        before = await sponsord.metrics(bench.http)
        cpu0, own0 = sponsord.server.cpu_ns(), time.thread_time()
        t0 = sponsord.last_trigger = time.perf_counter()
        await sponsord.trigger(bench.http)
        sponsord.version += 1
        deadline = time.monotonic() + 30
        while len(answers) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        cpu1, own1 = sponsord.server.cpu_ns(), time.thread_time()
        good = [t for status, version, t in answers if status == 200 and version == sponsord.version]
        result = timing(t0, good, n)
        result["server_cpu_ms"] = round((cpu1 - cpu0) / 1e6, 1)
        result["swarm_cpu_ms"] = round((own1 - own0) * 1000, 1)
        after = await sponsord.metrics(bench.http)
        key = "sponsord_broadcast_seconds_sum"
        result["publish_ms"] = round((after.get(key, 0) - before.get(key, 0)) * 1000, 2)
        result["statuses"] = sorted({a[0] for a in answers})
        out["rounds"].append(result)
        for transport in transports:
            transport.abort()
        print(
            f"  long-poll n={n} round {r + 1}/{rounds}: spread {result['spread_ms']} ms"
            f" p99 {result['p99_ms']} ms rss/waiter {out['rss_kib_per_waiter'][-1]} KiB"
            f" publish {result['publish_ms']} ms cpu server {result['server_cpu_ms']}"
            f" swarm {result['swarm_cpu_ms']} ms",
            flush=True,
        )
        await asyncio.sleep(0.5)
    return out


async def rest(bench: Bench, seconds: float, rounds: int = 8) -> dict[str, Any]:
    """Requests/s of GET /v1/supporters (200 and 304) against a bare aiohttp handler."""
    sponsord = bench.sponsord
    assert sponsord is not None
    async with bench.http.get(f"{sponsord.base}/v1/supporters") as resp:
        body, etag = await resp.read(), resp.headers["ETag"]
    body_file = bench.workdir / "rest-body.json"
    body_file.write_bytes(body)
    port = free_port()
    argv = [python(), "-m", "tests.bench.refservers", "bare", "--port", str(port), "--body", str(body_file)]
    bare = Server("bare", argv, port, bench.logs / "bare.log")
    await bare.start()
    cases = {
        "sponsord": (sponsord.port, {}),
        "bare": (port, {}),
        "sponsord_304": (sponsord.port, {"If-None-Match": etag}),
        "bare_304": (port, {"If-None-Match": bare_etag(body)}),
    }
    servers = {"sponsord": sponsord.server, "bare": bare}
    out: dict[str, Any] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for r in range(rounds):
            names = list(cases)
            names = names[r % 4 :] + names[: r % 4]
            for name in names:
                port_, headers = cases[name]
                server = servers[name.split("_")[0]]
                gen = LoadGen("127.0.0.1", port_, "/v1/supporters", headers)
                cpu0, count0 = server.cpu_ns(), gen.count
                rps = await gen.run(seconds)
                expected = 304 if "If-None-Match" in headers else 200
                if set(gen.statuses) != {expected}:
                    raise RuntimeError(f"REST {name}: statuses {gen.statuses}")
                out[name].append(round(rps))
                cpu[name].append(round((server.cpu_ns() - cpu0) / 1000 / max(1, gen.count - count0), 1))
            print(
                f"  rest round {r + 1}/{rounds}: "
                + ", ".join(f"{k} {v[-1]}/s ({cpu[k][-1]} µs cpu)" for k, v in out.items()),
                flush=True,
            )
    finally:
        await bare.stop()
    out["cpu_us_per_request"] = cpu
    return out


async def snapshot_build(bench: Bench, sizes: list[int], repeats: int = 5) -> dict[str, Any]:
    """Parse + roster + encode for campaigns of ``sizes`` members (pages of 1000)."""
    out: dict[str, Any] = {}
    for n in sizes:
        sim = Simulator.with_members(n, seed=n)
        base = await sim.start()
        pages: list[bytes] = []
        query = dict(MEMBER_QUERY)
        headers = {"Authorization": f"Bearer {next(iter(sim.access_tokens))}"}
        url = base + MEMBERS_PATH.format(campaign_id=sim.campaign.id)
        try:
            while True:
                async with bench.http.get(url, params=query, headers=headers) as resp:
                    raw = await resp.read()
                pages.append(raw)
                cursor = json.loads(raw)["meta"]["pagination"]["cursors"]["next"]
                if cursor is None:
                    break
                query["page[cursor]"] = cursor
        finally:
            await sim.stop()
        runs: list[dict[str, float]] = []
        supporters: tuple[dict[str, str], ...] = ()
        for _ in range(repeats):
            gc.collect()
            t0 = time.perf_counter()
            cpu0 = time.thread_time()
            # The collector is paused exactly where sponsord pauses it: around
            # each page's decode and parse, and around roster + encoding.
            docs = []
            for raw in pages:
                with gc_paused():
                    docs.append(json.loads(raw))
            t1 = time.perf_counter()
            members = []
            for doc in docs:
                with gc_paused():
                    members.extend(parse_members(doc).members)
            t2 = time.perf_counter()
            with gc_paused():
                supporters = build_supporters(members)
                t3 = time.perf_counter()
                Snapshot.build(1, datetime.now(UTC), supporters, 20)
            t4 = time.perf_counter()
            runs.append(
                {
                    "ms": (t4 - t0) * 1000,
                    "cpu_ms": (time.thread_time() - cpu0) * 1000,
                    "json_ms": (t1 - t0) * 1000,
                    "parse_ms": (t2 - t1) * 1000,
                    "roster_ms": (t3 - t2) * 1000,
                    "encode_ms": (t4 - t3) * 1000,
                }
            )
        best = min(runs, key=lambda r: r["ms"])
        out[str(n)] = {
            **{k: round(v, 2) for k, v in best.items()},
            "us_per_member": round(best["ms"] * 1000 / n, 2),
            "supporters": len(supporters),
            "pages": len(pages),
            "page_bytes": sum(map(len, pages)),
        }
        print(
            f"  snapshot build {n} members: {best['ms']:.1f} ms ({best['ms'] * 1000 / n:.2f} µs/member:"
            f" json {best['json_ms']:.1f}, parse {best['parse_ms']:.1f}, roster {best['roster_ms']:.1f},"
            f" encode {best['encode_ms']:.1f} ms)",
            flush=True,
        )
    return out


async def storm(bench: Bench, n: int) -> dict[str, Any]:
    """``n`` clients dropped by a restart: time until all hold the current state again."""
    sponsord = bench.sponsord
    assert sponsord is not None
    swarm = Swarm("127.0.0.1", sponsord.port, sponsord.path)
    await swarm.connect(n)
    _quiet_gc()
    await asyncio.sleep(SETTLE)
    swarm.reconnect = True
    swarm.expect(sponsord.version, n)
    t0 = time.perf_counter()
    stop_s, up_s = await sponsord.server.restart()
    times = await swarm.wait(60.0)
    result = {
        "clients": n,
        "back": len(times),
        "stop_s": round(stop_s, 2),
        "down_s": round(up_s, 2),
        "all_back_s": round(max(times) - t0, 2) if times else None,
        "p50_back_s": round(pct([t - t0 for t in times], 0.5), 2) if times else None,
        "close_1001": swarm.close_codes.count(1001),
        "reconnect_attempts": swarm.reconnects,
    }
    await swarm.close()
    print(
        f"  storm n={n}: {result['back']} back, all within {result['all_back_s']} s"
        f" (old process gone after {result['stop_s']} s, new one listening after {result['down_s']} s,"
        f" {result['close_1001']} got 1001)",
        flush=True,
    )
    return result
