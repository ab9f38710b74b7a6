"""Summaries, the issue's targets with pass/fail, and the printed tables.

Every figure is the median over broadcasts (or rounds) of one run, except
memory, which is read once per size from a freshly started process.
"""

from __future__ import annotations

import statistics
from typing import Any

#: Noise allowance for "no more" comparisons between two runs of one server.
SAME_COST_SLACK = 1.2


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def summarize(per: dict[str, Any]) -> dict[str, Any]:
    """One server at one size: medians of its rounds and broadcasts."""
    b = per["broadcasts"]
    out = {
        "connect_s": med(per["connect_s"]),
        "kib_per_conn": per["rss_kib_per_conn"][0],
        "spread_ms": med([x["spread_ms"] for x in b]),
        "p50_ms": med([x["p50_ms"] for x in b]),
        "p95_ms": med([x["p95_ms"] for x in b]),
        "p99_ms": med([x["p99_ms"] for x in b]),
        "cpu_ms": med([x.get("server_cpu_ms") for x in b]),
        "missing": sum(x["expected"] - x["received"] for x in b),
        "compressed": per.get("compressed", 0),
    }
    if b and "fetch_ms" in b[0]:
        out["fetch_ms"] = med([x["fetch_ms"] for x in b])
        out["publish_ms"] = med([x["publish_ms"] for x in b])
        out["p99_minus_fetch_ms"] = med([x["p99_ms"] - x["fetch_ms"] for x in b])
    return out


def _target(name: str, measured: float | None, limit: str, ok: bool | None, note: str = "") -> dict[str, Any]:
    return {"target": name, "measured": measured, "limit": limit, "pass": ok, "note": note}


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value and pass/fail (None: not measured)."""
    out: list[dict[str, Any]] = []
    ws = results.get("websocket", {})
    big = str(max((int(n) for n in ws), default=0))
    if big in ws:
        s = {k: summarize(v) for k, v in ws[big].items()}
        sp, fl, wb = s["sponsord"], s["floor"], s["websockets"]
        r_floor = sp["spread_ms"] / fl["spread_ms"]
        r_ws = sp["spread_ms"] / wb["spread_ms"]
        out.append(
            _target(f"ws spread at {big}: sponsord/floor", round(r_floor, 2), "<= 1.2", r_floor <= 1.2)
        )
        out.append(_target(f"ws spread at {big}: sponsord/websockets", round(r_ws, 2), "<= 0.9", r_ws <= 0.9))
        kib = sp["kib_per_conn"]
        out.append(_target(f"RSS per idle ws connection at {big}", kib, "<= 10 KiB", kib <= 10))
        cooldown = results["meta"]["settings"]["cooldown"] * 1000
        e2e = sp["p99_minus_fetch_ms"]
        out.append(
            _target(
                f"end to end at {big}: webhook -> all clients, p99 - fetch",
                round(e2e, 1),
                f"<= cooldown + 200 ms = {cooldown + 200:.0f} ms",
                e2e <= cooldown + 200,
                f"p99 {sp['p99_ms']:.0f} ms, fetch {sp['fetch_ms']:.0f} ms",
            )
        )
    deflate = results.get("deflate", {})
    if deflate and big in deflate and big in ws:
        plain, comp = summarize(ws[big]["sponsord"]), summarize(deflate[big]["sponsord"])
        mem_ok = comp["kib_per_conn"] <= max(
            plain["kib_per_conn"] * SAME_COST_SLACK, plain["kib_per_conn"] + 1
        )
        spread_ok = comp["spread_ms"] <= plain["spread_ms"] * SAME_COST_SLACK
        out.append(
            _target(
                "deflate-offering clients: KiB/conn vs plain",
                round(comp["kib_per_conn"] / plain["kib_per_conn"], 2),
                f"<= {SAME_COST_SLACK} (noise)",
                mem_ok,
                f"{comp['compressed']} of {big} negotiated deflate",
            )
        )
        out.append(
            _target(
                "deflate-offering clients: spread vs plain",
                round(comp["spread_ms"] / plain["spread_ms"], 2),
                f"<= {SAME_COST_SLACK} (noise)",
                spread_ok,
            )
        )
    lp = results.get("longpoll")
    if lp and big in ws:
        spread = med([r["spread_ms"] for r in lp["rounds"]])
        ws_spread = summarize(ws[big]["sponsord"])["spread_ms"]
        ratio = spread / ws_spread
        out.append(_target("long-poll spread / ws spread", round(ratio, 2), "<= 2", ratio <= 2))
    rest = results.get("rest")
    if rest:
        for path in ("", "_304"):
            ratio = med(rest[f"sponsord{path}"]) / med(rest[f"bare{path}"])
            label = "REST 304 req/s vs bare" if path else "REST 200 req/s vs bare"
            out.append(_target(label, round(ratio, 2), ">= 0.9", ratio >= 0.9))
    snap = results.get("snapshot")
    if snap:
        if "10000" in snap:
            ms = snap["10000"]["ms"]
            out.append(_target("snapshot build, 10,000 members", ms, "< 100 ms", ms < 100))
        costs = [v["us_per_member"] for k, v in snap.items() if int(k) >= 10000]
        if len(costs) >= 2:
            ratio = max(costs) / min(costs)
            out.append(
                _target(
                    "snapshot build linear (µs/member, 10k vs 50k)", round(ratio, 2), "<= 1.3", ratio <= 1.3
                )
            )
    storm = results.get("storm")
    if storm:
        ok = (
            storm["back"] == storm["clients"]
            and storm["all_back_s"] is not None
            and storm["all_back_s"] <= 30
        )
        out.append(
            _target(
                f"reconnect storm: {storm['clients']} clients back with the state",
                storm["all_back_s"],
                "<= 30 s (the page's backoff cap)",
                ok,
                f"{storm['back']} back",
            )
        )
    return out


#: The fan-out table: its headers, the summary keys in its columns, and which get ratios.
HEADERS = [
    "clients",
    "server",
    "connect s",
    "KiB/conn",
    "spread ms",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "server CPU ms",
]
COLUMNS = ["connect_s", "kib_per_conn", "spread_ms", "p50_ms", "p95_ms", "p99_ms", "cpu_ms"]
RATIO_COLUMNS = {"connect_s", "kib_per_conn", "spread_ms", "cpu_ms"}


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join("" if c is None else str(c) for c in cells) + " |"


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def render(results: dict[str, Any]) -> str:
    """Markdown tables of one run."""
    meta = results["meta"]
    m = meta["machine"]
    lines = [
        f"Command: `{meta['command']}` ({meta['seconds']} s, {meta['started_at']})",
        f"Machine: {m['cpu']}, {m['memory']}, Linux {m['kernel']}; Python {m['python']},"
        f" aiohttp {m['aiohttp']}, websockets {m['websockets']}; {meta['pinning']}",
        f"Payload: one full_state frame of {meta.get('payload_bytes')} bytes (100 names)",
        "",
    ]
    for mode in ("websocket", "deflate"):
        data = results.get(mode)
        if not data:
            continue
        title = (
            "WebSocket fan-out"
            if mode == "websocket"
            else "WebSocket fan-out, clients offering permessage-deflate"
        )
        lines += [
            f"### {title}",
            "",
            _row([*HEADERS, "notes"]),
            _row(["---:", ":---", *["---:"] * (len(HEADERS) - 2), ":---"]),
        ]
        for n, servers in data.items():
            sums = {k: summarize(v) for k, v in servers.items()}
            for name, s in sums.items():
                notes = []
                if "fetch_ms" in s:
                    notes.append(
                        f"from webhook; fetch {_f(s['fetch_ms'])} ms, publish {_f(s['publish_ms'])} ms"
                    )
                if mode == "deflate":
                    notes.append(f"deflate on {s['compressed']}")
                if s["missing"]:
                    notes.append(f"{s['missing']} receipts missing")
                cells = [_f(s[k], 2 if k == "connect_s" else 1) for k in COLUMNS]
                lines.append(_row([f"{int(n):,}", name, *cells, "; ".join(notes)]))
            if {"sponsord", "floor", "websockets"} <= set(sums):
                sp = sums["sponsord"]
                for ref in ("floor", "websockets"):
                    ratios = [_f(sp[k] / sums[ref][k], 2) if k in RATIO_COLUMNS else "" for k in COLUMNS]
                    lines.append(_row(["", f"**sponsord/{ref}**", *ratios, ""]))
        lines.append("")
    other: list[str] = []
    lp = results.get("longpoll")
    if lp:
        rounds = lp["rounds"]
        other.append(
            _row(
                [
                    f"long-poll, {rounds[0]['expected']:,} waiters answered by one change",
                    f"spread {_f(med([r['spread_ms'] for r in rounds]))} ms,"
                    f" p99 {_f(med([r['p99_ms'] for r in rounds]))} ms"
                    f" from webhook, {_f(lp['rss_kib_per_waiter'][0])} KiB/waiter;"
                    f" server CPU {_f(med([r.get('server_cpu_ms') for r in rounds]))} ms,"
                    f" publish {_f(med([r.get('publish_ms') for r in rounds]))} ms",
                ]
            )
        )
    rest = results.get("rest")
    if rest:
        for path in ("", "_304"):
            sp, bare = med(rest[f"sponsord{path}"]), med(rest[f"bare{path}"])
            cpu = rest.get("cpu_us_per_request", {})
            sp_cpu, bare_cpu = med(cpu.get(f"sponsord{path}", [])), med(cpu.get(f"bare{path}", []))
            label = "GET /v1/supporters " + ("304 (If-None-Match)" if path else "200")
            other.append(
                _row(
                    [
                        label,
                        f"sponsord {sp:,.0f}/s, bare aiohttp {bare:,.0f}/s ({sp / bare:.2f}x);"
                        f" server CPU per request {_f(sp_cpu)} vs {_f(bare_cpu)} µs",
                    ]
                )
            )
    snap = results.get("snapshot")
    if snap:
        for n, v in snap.items():
            parts = ", ".join(f"{k} {_f(v.get(f'{k}_ms'))}" for k in ("json", "parse", "roster", "encode"))
            other.append(
                _row(
                    [
                        f"snapshot build, {int(n):,} members"
                        f" ({v['pages']} pages, {v['page_bytes'] / 1e6:.1f} MB)",
                        f"{_f(v['ms'])} ms = {parts} ms; {_f(v['us_per_member'], 2)} µs/member",
                    ]
                )
            )
    storm = results.get("storm")
    if storm:
        other.append(
            _row(
                [
                    f"reconnect storm, {storm['clients']:,} clients, sponsord restarted",
                    f"{storm['back']:,} back holding the state within {_f(storm['all_back_s'])} s"
                    f" (median {_f(storm['p50_back_s'])} s; old process gone after {_f(storm['stop_s'])} s,"
                    f" new one listening after {_f(storm['down_s'])} s)",
                ]
            )
        )
    if other:
        lines += [
            "### Other figures",
            "",
            _row(["measurement", "result"]),
            _row([":---", ":---"]),
            *other,
            "",
        ]
    targets = results.get("targets", [])
    if targets:
        lines += [
            "### Targets",
            "",
            _row(["target", "measured", "limit", "result", "note"]),
            _row([":---", "---:", ":---", ":---", ":---"]),
        ]
        for t in targets:
            verdict = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
            lines.append(_row([t["target"], t["measured"], t["limit"], verdict, t["note"]]))
        met = sum(1 for t in targets if t["pass"])
        lines += ["", f"{met} of {len(targets)} targets met."]
    return "\n".join(lines) + "\n"
