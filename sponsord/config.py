"""Settings: ``config.toml`` into frozen, typed, validated dataclasses; secrets.

Every key is checked here, once, so the rest of the code can trust its
settings. A bad file raises :class:`~sponsord.errors.ConfigError`, whose text
names the file, the key and what was expected (the CLI prints it and exits 2).

Secrets never live in the file. Each one is read from ``$CREDENTIALS_DIRECTORY``
(systemd's ``LoadCredential=``, a file of the lower-case name) or else from the
environment variable of the same name, and is held in :class:`Secret`, whose
``repr`` hides the value.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from yarl import URL

from .errors import ConfigError

T = TypeVar("T")


class Secret:
    """A string that does not show itself in logs, reprs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself; call only where it is sent or compared."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: where and to whom the daemon answers.

    host, port: the listening address (ignored under socket activation).
    public_url: where browsers reach this server; filled into ``embed.js``.
    allowed_origins: CORS and WebSocket Origin allow-list (``public_url``'s own
        origin is always allowed; ``"*"`` allows every origin).
    trusted_proxies: networks whose ``CF-Connecting-IP``/``X-Forwarded-For`` are
        believed; ``("cloudflare",)`` means Cloudflare's shipped ranges.
    max_clients: WebSocket + long-poll clients held at once; 503 above.
    max_clients_per_address: the same, per client address.
    websocket_compress: accept permessage-deflate (costs CPU per client).
    heartbeat: seconds between WebSocket pings.
    slow_client_timeout: seconds a client may leave a frame unread before it
        is closed with 4008.
    longpoll_wait: default seconds a long-poll is held (``wait=`` may shorten).
    metrics_allow: networks allowed to read ``/metrics``.
    idle_timeout: seconds a connection may sit idle, or take to send its
        request headers, before it is closed (the defence against slowloris).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = "http://127.0.0.1:8080"
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    max_clients: int = 20000
    max_clients_per_address: int = 64
    websocket_compress: bool = False
    heartbeat: float = 25.0
    slow_client_timeout: float = 10.0
    longpoll_wait: float = 25.0
    metrics_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    idle_timeout: float = 75.0

    @property
    def public_origin(self) -> str:
        """The ``scheme://host[:port]`` origin of ``public_url``."""
        return str(URL(self.public_url).origin())


@dataclass(frozen=True, slots=True)
class PatreonConfig:
    """``[patreon]``: the campaign and how it is fetched (seconds as floats).

    api_base: Patreon's base URL (tests and the simulator point elsewhere).
    campaign_id: the numeric id of the creator's campaign.
    poll_interval: seconds between polls while healthy.
    webhook_cooldown: webhooks inside this window share one refresh.
    backoff_base, backoff_max: full-jitter backoff after failures.
    request_timeout: total seconds for one Patreon request.
    max_pages: stop (and fail the refresh) past this many pages.
    requests_per_minute: the upstream budget, below Patreon's 100/min.
    """

    api_base: str = "https://www.patreon.com"
    campaign_id: str = ""
    poll_interval: float = 300.0
    webhook_cooldown: float = 2.0
    backoff_base: float = 5.0
    backoff_max: float = 600.0
    request_timeout: float = 30.0
    max_pages: int = 200
    requests_per_minute: float = 60.0


@dataclass(frozen=True, slots=True)
class DisplayConfig:
    """``[display]``: what the page shows besides the supporters."""

    goal_count: int = 20
    join_url: str = "https://www.patreon.com/"


@dataclass(frozen=True, slots=True)
class StateConfig:
    """``[state]``: the directory holding the snapshot and rotated tokens."""

    dir: Path = Path("/var/lib/sponsord")


@dataclass(frozen=True, slots=True)
class Secrets:
    """The credentials, each ``None`` when not provided."""

    access_token: Secret | None = None
    webhook_secret: Secret | None = None
    webhook_secret_previous: Secret | None = None
    client_id: Secret | None = None
    client_secret: Secret | None = None
    refresh_token: Secret | None = None

    @property
    def can_rotate(self) -> bool:
        """True when the three OAuth values needed to refresh a token are set."""
        return None not in (self.client_id, self.client_secret, self.refresh_token)

    @property
    def webhook_secrets(self) -> tuple[Secret, ...]:
        """The current and (during a rotation) the previous webhook secret."""
        return tuple(s for s in (self.webhook_secret, self.webhook_secret_previous) if s)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    patreon: PatreonConfig = field(default_factory=PatreonConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)
    state: StateConfig = field(default_factory=StateConfig)
    secrets: Secrets = field(default_factory=Secrets)
    path: str = "<defaults>"

    def with_secrets(self, secrets: Secrets) -> Config:
        """A copy holding ``secrets``."""
        return replace(self, secrets=secrets)


SECRET_NAMES = {
    "access_token": "PATREON_ACCESS_TOKEN",
    "webhook_secret": "PATREON_WEBHOOK_SECRET",
    "webhook_secret_previous": "PATREON_WEBHOOK_SECRET_PREVIOUS",
    "client_id": "PATREON_CLIENT_ID",
    "client_secret": "PATREON_CLIENT_SECRET",
    "refresh_token": "PATREON_REFRESH_TOKEN",
}


def load_secrets(environ: Mapping[str, str] | None = None, path: str = "<environment>") -> Secrets:
    """Read every secret from ``$CREDENTIALS_DIRECTORY`` files or the environment."""
    env = os.environ if environ is None else environ
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    values: dict[str, Secret | None] = {}
    for attr, name in SECRET_NAMES.items():
        value: str | None = None
        if cred_dir:
            file = Path(cred_dir) / name.lower()
            try:
                value = file.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                value = None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    str(file), name, f"a readable UTF-8 file ({exc.__class__.__name__})"
                ) from None
        if value is None:
            value = env.get(name, "").strip() or None
        values[attr] = Secret(value) if value else None
    return Secrets(**values)


class _Section:
    """Reads and type-checks the keys of one TOML table, remembering which were used."""

    def __init__(self, path: str, name: str, table: Any) -> None:
        if not isinstance(table, dict):
            raise ConfigError(path, name, "a table")
        self.path, self.name, self.table = path, name, table
        self.used: set[str] = set()

    def error(self, key: str, expected: str) -> ConfigError:
        return ConfigError(self.path, f"{self.name}.{key}", expected)

    def get(self, key: str, default: T, check: Callable[[Any], T | None], expected: str) -> T:
        self.used.add(key)
        if key not in self.table:
            return default
        value = check(self.table[key])
        if value is None:
            raise self.error(key, f"{expected}, got {self.table[key]!r}")
        return value

    def string(self, key: str, default: str, *, empty: bool = False) -> str:
        def check(v: Any) -> str | None:
            return v.strip() if isinstance(v, str) and (empty or v.strip()) else None

        return self.get(key, default, check, "a non-empty string")

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        def check(v: Any) -> int | None:
            ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
            return v if ok else None

        return self.get(key, default, check, f"an integer from {lo} to {hi}")

    def seconds(self, key: str, default: float, lo: float, hi: float) -> float:
        def check(v: Any) -> float | None:
            if isinstance(v, bool) or not isinstance(v, int | float):
                return None
            f = float(v)
            return f if math.isfinite(f) and lo <= f <= hi else None

        return self.get(key, default, check, f"a number of seconds from {lo:g} to {hi:g}")

    def boolean(self, key: str, default: bool) -> bool:
        return self.get(key, default, lambda v: v if isinstance(v, bool) else None, "true or false")

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        def check(v: Any) -> tuple[str, ...] | None:
            if isinstance(v, list) and all(isinstance(s, str) and s.strip() for s in v):
                return tuple(s.strip() for s in v)
            return None

        return self.get(key, default, check, "a list of non-empty strings")

    def url(self, key: str, default: str) -> str:
        def check(v: Any) -> str | None:
            if not isinstance(v, str):
                return None
            try:
                u = URL(v.strip())
            except (ValueError, TypeError):
                return None
            return str(u).rstrip("/") if u.scheme in ("http", "https") and u.host else None

        return self.get(key, default, check, "an http(s) URL")

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.error(unknown[0], "not a known key (typo?)")


def _origin(section: _Section, value: str) -> str:
    if value == "*":
        return value
    try:
        u = URL(value)
    except ValueError:
        u = URL()
    if u.scheme not in ("http", "https") or not u.host or u.path not in ("", "/"):
        raise section.error("allowed_origins", f'origins like "https://example.com" or "*", got {value!r}')
    return str(u.origin())


def _networks(section: _Section, key: str, values: tuple[str, ...]) -> tuple[str, ...]:
    for v in values:
        if v == "cloudflare" and key == "trusted_proxies":
            continue
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            extra = ' or "cloudflare"' if key == "trusted_proxies" else ""
            raise section.error(key, f'CIDR networks like "10.0.0.0/8"{extra}, got {v!r}') from None
    return values


def parse_config(data: Mapping[str, Any], path: str = "<config>") -> Config:
    """Validate a parsed TOML document into a :class:`Config` (no secrets)."""
    known = {"server", "patreon", "display", "state"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(path, unknown[0], "not a known table (expected server, patreon, display, state)")

    s = _Section(path, "server", data.get("server", {}))
    d = ServerConfig()
    host = s.string("host", d.host)
    port = s.integer("port", d.port, 0, 65535)
    public_url = s.url("public_url", f"http://{host}:{port}")
    origins = tuple(_origin(s, o) for o in s.strings("allowed_origins", d.allowed_origins))
    proxies_raw = (
        data.get("server", {}).get("trusted_proxies") if isinstance(data.get("server"), dict) else None
    )
    if proxies_raw == "cloudflare":
        s.used.add("trusted_proxies")
        proxies: tuple[str, ...] = ("cloudflare",)
    else:
        proxies = _networks(s, "trusted_proxies", s.strings("trusted_proxies", d.trusted_proxies))
    server = ServerConfig(
        host=host,
        port=port,
        public_url=public_url,
        allowed_origins=origins,
        trusted_proxies=proxies,
        max_clients=s.integer("max_clients", d.max_clients, 1, 10_000_000),
        max_clients_per_address=s.integer(
            "max_clients_per_address", d.max_clients_per_address, 1, 10_000_000
        ),
        websocket_compress=s.boolean("websocket_compress", d.websocket_compress),
        heartbeat=s.seconds("heartbeat", d.heartbeat, 1, 90),
        slow_client_timeout=s.seconds("slow_client_timeout", d.slow_client_timeout, 0.1, 300),
        longpoll_wait=s.seconds("longpoll_wait", d.longpoll_wait, 1, 55),
        metrics_allow=_networks(s, "metrics_allow", s.strings("metrics_allow", d.metrics_allow)),
        idle_timeout=s.seconds("idle_timeout", d.idle_timeout, 1, 3600),
    )
    s.finish()

    p = _Section(path, "patreon", data.get("patreon", {}))
    dp = PatreonConfig()
    campaign_id = p.string("campaign_id", "")
    if not campaign_id.isdigit():
        raise p.error(
            "campaign_id", f'the numeric campaign id as a string, like "725055", got {campaign_id!r}'
        )
    patreon = PatreonConfig(
        api_base=p.url("api_base", dp.api_base),
        campaign_id=campaign_id,
        poll_interval=p.seconds("poll_interval", dp.poll_interval, 1, 86400),
        webhook_cooldown=p.seconds("webhook_cooldown", dp.webhook_cooldown, 0, 600),
        backoff_base=p.seconds("backoff_base", dp.backoff_base, 0.01, 3600),
        backoff_max=p.seconds("backoff_max", dp.backoff_max, 1, 86400),
        request_timeout=p.seconds("request_timeout", dp.request_timeout, 0.1, 300),
        max_pages=p.integer("max_pages", dp.max_pages, 1, 100_000),
        requests_per_minute=p.seconds("requests_per_minute", dp.requests_per_minute, 1, 100),
    )
    p.finish()

    g = _Section(path, "display", data.get("display", {}))
    dd = DisplayConfig()
    display = DisplayConfig(
        goal_count=g.integer("goal_count", dd.goal_count, 0, 1_000_000),
        join_url=g.url("join_url", dd.join_url),
    )
    g.finish()

    st = _Section(path, "state", data.get("state", {}))
    state = StateConfig(dir=Path(st.string("dir", str(StateConfig().dir))))
    st.finish()
    return Config(server=server, patreon=patreon, display=display, state=state, path=path)


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and return the configuration at ``path``, with secrets."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(name, "(file)", f"a readable file ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(name, "(file)", "UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, "(syntax)", f"valid TOML ({exc})") from None
    config = parse_config(data, name)
    return config.with_secrets(load_secrets(environ))
