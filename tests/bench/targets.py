"""The servers under test and how each is made to publish a new version.

sponsord publishes the way it does in production: the simulated campaign
changes (one supporter renamed, same length, so the payload keeps its size)
and a signed webhook tells sponsord, which fetches, builds the snapshot and
fans it out. The trigger time is when the webhook is sent, so sponsord's
latency includes the webhook, the upstream fetch and the persisted write;
``/metrics`` tells how long the fetch took. The reference servers publish
on ``GET /trigger?v=N``.
"""

from __future__ import annotations

import random
import string
from pathlib import Path

import aiohttp

from sponsord.simulator import FIRST_NAMES, LAST_NAMES, Campaign, Simulator

from .procs import Server, free_port, python

#: 100 visible supporters with 30-character names make a full_state frame of
#: about 4.4 KB, the payload the issue measures.
SUPPORTERS, NAME_LENGTH = 100, 30


def name_of_length(rng: random.Random, length: int) -> str:
    """A plausible name of exactly ``length`` characters."""
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    while len(name) < length:
        name += f"-{rng.choice(LAST_NAMES)}"
    name = name[:length]
    if not name[-1].isalpha():
        name = name[:-1] + rng.choice(string.ascii_lowercase)
    return name


def bench_simulator(seed: int = 44) -> Simulator:
    """A campaign of exactly SUPPORTERS visible, active patrons."""
    rng = random.Random(seed)
    campaign = Campaign(rng=rng)
    for i in range(SUPPORTERS):
        campaign.add_member(
            name_of_length(rng, NAME_LENGTH), start=f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}.000+00:00"
        )
    return Simulator(campaign)


class Target:
    """A WebSocket server under test."""

    name = ""
    path = "/v1/supporters/websocket"

    def __init__(self, server: Server, version: int) -> None:
        self.server = server
        self.version = version
        self.last_trigger = 0.0
        #: seconds between two triggers (sponsord's webhook cooldown)
        self.min_gap = 0.0

    @property
    def port(self) -> int:
        return self.server.port

    async def trigger(self, session: aiohttp.ClientSession) -> None:
        """Publish version ``self.version + 1`` (the caller bumps ``version``)."""
        raise NotImplementedError


class Reference(Target):
    """floor or websockets: ``GET /trigger?v=N`` publishes N."""

    def __init__(self, kind: str, body_file: Path, log: Path, version: int) -> None:
        port = free_port()
        argv = [python(), "-m", "tests.bench.refservers", kind, "--port", str(port), "--body", str(body_file)]
        super().__init__(Server(kind, argv, port, log), version)
        self.name = kind

    async def trigger(self, session: aiohttp.ClientSession) -> None:
        url = f"http://127.0.0.1:{self.port}/trigger?v={self.version + 1}"
        async with session.get(url) as resp:
            await resp.read()
            assert resp.status == 200, resp.status


SPONSORD_CONFIG = """\
# Written by tests/bench for one benchmark run.
[server]
host = "127.0.0.1"
port = {port}
allowed_origins = ["*"]
# one address (the swarm) holds every client
max_clients = 100000
max_clients_per_address = 100000

[patreon]
api_base = "{api_base}"
campaign_id = "{campaign_id}"
poll_interval = 86400.0
webhook_cooldown = {cooldown}
requests_per_minute = 100.0

[display]
goal_count = 120

[state]
dir = "{state_dir}"
"""


class Sponsord(Target):
    """The real ``sponsord serve`` against the in-process simulator."""

    name = "sponsord"

    def __init__(self, sim: Simulator, api_base: str, workdir: Path, log: Path, cooldown: float) -> None:
        port = free_port()
        config = workdir / "sponsord.toml"
        config.write_text(
            SPONSORD_CONFIG.format(
                port=port,
                api_base=api_base,
                campaign_id=sim.campaign.id,
                cooldown=cooldown,
                state_dir=workdir / "state",
            )
        )
        env = {
            "PATREON_ACCESS_TOKEN": next(iter(sim.access_tokens)),
            "PATREON_WEBHOOK_SECRET": sim.webhook_secret,
        }
        argv = [python(), "-m", "sponsord", "serve", "--config", str(config)]
        super().__init__(Server("sponsord", argv, port, log, env), 0)
        self.sim = sim
        self.rng = random.Random(7)
        self.min_gap = cooldown + 0.3
        self.base = f"http://127.0.0.1:{port}"

    async def trigger(self, session: aiohttp.ClientSession) -> None:
        members = list(self.sim.campaign.members)
        member = members[self.rng.randrange(len(members))]
        self.sim.campaign.rename(member, name_of_length(self.rng, NAME_LENGTH))
        status = await self.sim.send_webhook(
            session, f"{self.base}/v1/webhooks/patreon", "members:update", member
        )
        assert status == 202, status

    async def metrics(self, session: aiohttp.ClientSession) -> dict[str, float]:
        """The numeric samples of ``/metrics``."""
        async with session.get(f"{self.base}/metrics") as resp:
            text = await resp.text()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    async def health(self, session: aiohttp.ClientSession) -> dict[str, object]:
        async with session.get(f"{self.base}/healthz") as resp:
            data: dict[str, object] = await resp.json()
            return data
