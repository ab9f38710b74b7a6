"""Patreon OAuth token rotation that never locks the service out.

With ``PATREON_CLIENT_ID``, ``PATREON_CLIENT_SECRET`` and
``PATREON_REFRESH_TOKEN`` configured, :class:`RotatingTokens` is the
daemon's :class:`~sponsord.patreon.TokenSource`. It exchanges the refresh
token (``POST {api_base}/api/oauth2/token``, ``grant_type=refresh_token``)
for a new access *and* refresh token: before the access token expires (from
``expires_in``), on a 401, and once at the first start, which both learns the
expiry and proves the credentials work on day one rather than on day 31.
Every exchange passes the upstream budget, and concurrent callers share one
exchange (single flight).

The state lives in ``<state dir>/patreon-tokens.json`` (0600, written
atomically): the ``current`` pair and the ``previous`` one. At start the
persisted pair is preferred over the configured credentials, which are only
the seed (and the last resort, see below).

Why a helper process, and what a crash can do
---------------------------------------------
Patreon kills the old refresh token the moment it issues a new one. Nothing
can be persisted before it is received, so between Patreon's commit and our
fsync there is a window in which losing the process loses the only valid
refresh token. The window cannot be closed by any client; it can be made
small and independent of the daemon:

- The exchange runs in a short-lived helper (``python -m sponsord.tokens``,
  :func:`exchange`), started in its own session. It takes the state lock,
  POSTs, and writes the new pair before doing anything else; only then does
  it hand the pair to the daemon on stdout. The daemon uses a pair only once
  it is on disk.
- A crash, kill -9, OOM kill or watchdog abort of the *daemon* at any point
  loses nothing: the helper finishes on its own (it ignores SIGTERM once the
  request is sent) and the next daemon waits for the state lock before
  reading the file.
- Killing the helper before it sends the request loses nothing either
  (SIGTERM makes it exit at once then; the old token is still valid).
- What remains is the helper itself dying (or the machine losing power)
  between Patreon's commit and the fsync: a few milliseconds per rotation,
  about once a month. Then, and when Patreon refuses a token for any other
  reason, the daemon tries, in order, the persisted current token, the
  persisted previous one (Patreon may have rolled back a rotation it
  answered), and the configured ``PATREON_REFRESH_TOKEN`` (so an operator
  who re-authorizes only has to replace that credential and restart). An
  older token is only ever presented after the newer one was refused, so a
  server that revokes a token family on reuse cannot hurt a live token.
- A new pair that cannot be written (disk full) is still used, since the old
  one is dead anyway; the write is retried before every request and
  reported as ``token_rotations{outcome="unsaved"}``.

Tokens never appear in a log line, a repr or an argv: the helper gets them
on stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from . import __version__
from .errors import TokenRotationError
from .files import remove_stale_temps, write_atomic

if TYPE_CHECKING:
    from .budget import TokenBucket
    from .config import Config
    from .metrics import Metrics

log = structlog.get_logger(__name__)

TOKENS_FILE = "patreon-tokens.json"
LOCK_FILE = "patreon-tokens.lock"
TOKEN_PATH = "/api/oauth2/token"

#: Rotate when less than this share of the token's lifetime is left...
REFRESH_FRACTION = 0.2
#: ...but no earlier than a day before expiry (tokens live ~31 days; the poll
#: timer asks for a token far more often than once a day).
REFRESH_MARGIN_MAX = 86400.0

#: A token obtained because of a 401 and refused again this soon means the
#: token is not the problem (revoked app, wrong campaign): do not rotate again.
REJECT_COOLDOWN = 60.0

#: After a failed exchange, rotations due to expiry wait this long (the still
#: valid access token is used meanwhile); 401s are not held back by it.
RETRY_AFTER_FAILURE = 30.0

#: The helper's network timeout; short, so a stop (TimeoutStopSec=20) never
#: has to kill a helper that has sent its request.
EXCHANGE_TIMEOUT_MAX = 10.0

#: How long a starting daemon waits for a helper left by a previous one.
LOCK_WAIT = EXCHANGE_TIMEOUT_MAX * 2 + 5

#: Test hook (tests/test_tokens.py): seconds the helper sleeps between
#: receiving a new pair and writing it, so a test can kill the daemon there.
PAUSE_ENV = "SPONSORD_TEST_PAUSE_BEFORE_PERSIST"

#: Outcomes of one exchange, also the ``token_rotations{outcome}`` labels.
#: rotated: new pair persisted; unsaved: new pair, not yet persisted;
#: adopted: another process had rotated, its pair was taken from disk;
#: refused: Patreon rejected this refresh token (or the client credentials);
#: unavailable: no answer, 429 or 5xx; malformed: 200 but not a token pair.
OUTCOMES = ("rotated", "unsaved", "adopted", "refused", "unavailable", "malformed")


@dataclass(frozen=True, slots=True, repr=False)
class TokenPair:
    """One access token with the refresh token that came with it.

    access_token: the bearer token ("" when none is known yet).
    refresh_token: the single-use token that buys the next pair.
    expires_at: Unix time the access token expires; None when unknown.
    obtained_at: Unix time the pair was issued; None when unknown.
    """

    access_token: str
    refresh_token: str
    expires_at: float | None = None
    obtained_at: float | None = None

    def __repr__(self) -> str:
        return f"TokenPair(expires_at={self.expires_at!r}, obtained_at={self.obtained_at!r})"

    def to_json(self) -> dict[str, Any]:
        """The pair as stored in the state file."""
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "expires_at": self.expires_at,
            "obtained_at": self.obtained_at,
        }

    @classmethod
    def from_json(cls, obj: Any) -> TokenPair:
        """Parse a stored pair; ValueError if it is not one."""
        if not isinstance(obj, dict):
            raise ValueError("a token pair must be an object")
        access, refresh = obj.get("access_token"), obj.get("refresh_token")
        if not isinstance(access, str) or not isinstance(refresh, str) or not refresh:
            raise ValueError("a token pair needs string access_token and refresh_token")
        return cls(access, refresh, _opt_float(obj.get("expires_at")), _opt_float(obj.get("obtained_at")))

    def refresh_due(self, now: float) -> bool:
        """True when this pair should be exchanged before its access token is used."""
        if not self.access_token or self.expires_at is None:
            return True  # nothing to use, or an expiry we must learn
        lifetime = self.expires_at - (self.obtained_at if self.obtained_at is not None else now)
        margin = min(REFRESH_MARGIN_MAX, REFRESH_FRACTION * max(lifetime, 0.0))
        return now >= self.expires_at - margin

    def usable(self, now: float) -> bool:
        """True when the access token may still work (not known to be expired)."""
        return bool(self.access_token) and (self.expires_at is None or now < self.expires_at)


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a number or null")
    return float(value)


@dataclass(frozen=True, slots=True)
class TokenState:
    """The state file: the pair in use and the one before it."""

    current: TokenPair
    previous: TokenPair | None = None

    def encode(self) -> bytes:
        """The file's bytes."""
        doc = {
            "format": 1,
            "current": self.current.to_json(),
            "previous": self.previous.to_json() if self.previous else None,
        }
        return json.dumps(doc, indent=1).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> TokenState:
        """Parse the file; ValueError if it is not a state file."""
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != 1:
            raise ValueError("not a sponsord token file (format 1)")
        previous = doc.get("previous")
        return cls(
            TokenPair.from_json(doc.get("current")),
            None if previous is None else TokenPair.from_json(previous),
        )


def read_state(path: Path) -> TokenState | None:
    """The persisted state, or None when there is none (or it is unreadable, logged)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return TokenState.decode(data)
    except (ValueError, UnicodeDecodeError) as exc:
        log.error("token_state_unreadable", path=str(path), error=str(exc))
        return None


@contextlib.contextmanager
def state_lock(directory: Path, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold the state directory's token lock (blocking up to ``wait`` s; TimeoutError after)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{directory / LOCK_FILE} is held by another process") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


# -- the helper: one exchange, persisted before anything else -----------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A token endpoint never redirects; following one could leak the secrets."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _post_form(url: str, form: dict[str, str], timeout: float) -> tuple[int, bytes]:
    """POST a form; (status, body). Raises OSError when there is no HTTP answer."""
    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(form).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            "User-Agent": f"sponsord/{__version__} (+https://github.com/sponsord/sponsord)",
        },
        method="POST",
    )
    # No proxy from the environment (aiohttp ignores it too) and no redirects.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    try:
        with opener.open(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def _oauth_error(body: bytes) -> str:
    """The OAuth ``error`` code of a refusal (never the body: it could echo a secret)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return "no error code"
    error = doc.get("error") if isinstance(doc, dict) else None
    return error[:40] if isinstance(error, str) and error.isascii() else "no error code"


def exchange(request: dict[str, Any], on_commit: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Exchange one refresh token and persist the new pair before returning it.

    request: ``api_base``, ``client_id``, ``client_secret``, ``state_dir``,
        ``timeout``, ``use`` (the pair whose refresh token is spent) and
        ``expect_current`` (the refresh token the daemon believes is the
        persisted current one, or None when no state file exists).
    on_commit: called just before the request goes out (from then on the
        old token may be dead and the helper must not be interrupted).
    Returns ``{"outcome": ..., "pair": ..., "error": ...}`` (see OUTCOMES).
    """
    state_dir = Path(request["state_dir"])
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(state_lock(state_dir))
        except (TimeoutError, OSError) as exc:
            return {"outcome": "unavailable", "error": f"state lock: {exc}"}
        return _exchange_locked(request, state_dir, on_commit)
    raise AssertionError("unreachable")  # pragma: no cover (mypy: ExitStack may swallow)


def _exchange_locked(
    request: dict[str, Any], state_dir: Path, on_commit: Callable[[], None]
) -> dict[str, Any]:
    path = state_dir / TOKENS_FILE
    use = TokenPair.from_json(request["use"])
    remove_stale_temps(state_dir, TOKENS_FILE)
    try:
        state = read_state(path)
    except OSError as exc:  # nothing sent yet: the token is intact, say why and stop
        return {"outcome": "unavailable", "error": f"cannot read {path}: {exc.strerror or exc}"}
    if state is not None and state.current.refresh_token != request.get("expect_current"):
        # A helper of a previous daemon rotated since this daemon read the
        # file: spending our token again would only be refused.
        return {"outcome": "adopted", **_pairs(state)}
    on_commit()
    sent_at = time.time()
    try:
        status, body = _post_form(
            request["api_base"].rstrip("/") + TOKEN_PATH,
            {
                "grant_type": "refresh_token",
                "refresh_token": use.refresh_token,
                "client_id": request["client_id"],
                "client_secret": request["client_secret"],
            },
            float(request["timeout"]),
        )
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
        return {
            "outcome": "unavailable",
            "error": f"no answer from the token endpoint ({type(exc).__name__})",
        }
    if status in (400, 401, 403):
        return {"outcome": "refused", "error": f"HTTP {status}: {_oauth_error(body)}"}
    if status != 200:
        return {"outcome": "unavailable", "error": f"the token endpoint answered HTTP {status}"}
    try:
        doc = json.loads(body)
        access, refresh = doc["access_token"], doc.get("refresh_token") or use.refresh_token
        expires_in = doc.get("expires_in")
        if not (isinstance(access, str) and access and isinstance(refresh, str)):
            raise ValueError("no tokens")
        expires_at = sent_at + float(expires_in) if isinstance(expires_in, int | float) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return {"outcome": "malformed", "error": "the token endpoint's answer is not a token pair"}
    # From here to the fsync is the window described in the module docstring:
    # nothing else happens in it.
    new = TokenState(TokenPair(access, refresh, expires_at, sent_at), use)
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        time.sleep(float(pause))
    try:
        write_atomic(path, new.encode(), mode=0o600)
    except OSError as exc:
        return {"outcome": "unsaved", "error": str(exc), **_pairs(new)}
    return {"outcome": "rotated", **_pairs(new)}


def _pairs(state: TokenState) -> dict[str, Any]:
    return {"pair": state.current.to_json(), "previous": state.previous.to_json() if state.previous else None}


def _helper_main() -> int:
    """``python -m sponsord.tokens``: read a request on stdin, exchange, answer on stdout."""
    # stdout carries the answer to the daemon: log lines go to stderr (the journal).
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    committed = False

    def on_signal(signum: int, frame: object) -> None:
        if not committed:
            os._exit(3)  # nothing sent yet: the old token is intact, stop now
        # Sent: finish and persist; the answer is seconds away at most.

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    def commit() -> None:
        nonlocal committed
        committed = True

    request = json.loads(sys.stdin.buffer.read())
    result = exchange(request, on_commit=commit)
    try:
        sys.stdout.write(json.dumps(result))
        sys.stdout.flush()
    except BrokenPipeError:
        # The daemon is gone; the pair is on disk for the next one. Point stdout
        # at /dev/null, or the flush at exit prints a traceback to the journal.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


# -- the daemon's side ---------------------------------------------------------


class RotatingTokens:
    """A :class:`~sponsord.patreon.TokenSource` that rotates Patreon's OAuth tokens.

    config: needs ``secrets.can_rotate``; ``state.dir`` holds the token file.
    budget: the upstream token bucket every exchange passes, like any request.
    metrics: ``token_rotations{outcome}`` and the expiry gauge.
    clock: wall-clock seconds (expiry is wall-clock: it survives restarts).
    """

    def __init__(
        self,
        config: Config,
        budget: TokenBucket,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        s = config.secrets
        if s.client_id is None or s.client_secret is None or s.refresh_token is None:
            raise ValueError("token rotation needs PATREON_CLIENT_ID, _CLIENT_SECRET and _REFRESH_TOKEN")
        self._client_id = s.client_id
        self._client_secret = s.client_secret
        self._configured = TokenPair(
            s.access_token.reveal() if s.access_token else "", s.refresh_token.reveal()
        )
        self._api_base = config.patreon.api_base
        self._timeout = min(config.patreon.request_timeout, EXCHANGE_TIMEOUT_MAX)
        self.state_dir = config.state.dir
        self._budget = budget
        self._metrics = metrics
        self._clock = clock
        self._state: TokenState | None = None  # what is on disk (None: nothing yet)
        self._pair: TokenPair | None = None  # what is used (None until loaded)
        self._unsaved: TokenState | None = None
        self._task: asyncio.Task[None] | None = None
        self._rejected_at = -float("inf")  # monotonic time of the last 401-driven rotation
        self._retry_at = -float("inf")  # monotonic time before which expiry rotations wait
        self._persist_at = -float("inf")  # monotonic time of the next retry of an unsaved pair
        #: exchanges started (for tests)
        self.exchanges = 0

    @property
    def pair(self) -> TokenPair | None:
        """The pair in use (None before the first :meth:`get`)."""
        return self._pair

    # -- TokenSource --------------------------------------------------------

    async def get(self) -> str:
        """The access token to send; rotates first when it is due (or unknown)."""
        pair = await self._loaded()
        if self._unsaved is not None and time.monotonic() >= self._persist_at:
            await self._persist_unsaved()
        try:
            if self._task is not None:
                await self._join()
            elif pair.refresh_due(self._clock()) and time.monotonic() >= self._retry_at:
                await self._rotate("startup" if pair.expires_at is None else "expiry")
        except TokenRotationError:
            if not self._current().usable(self._clock()):
                raise
            # The access token still works: keep serving, retry later.
        token = self._current().access_token
        if not token:
            raise TokenRotationError(
                "no Patreon access token yet: the first token exchange has not succeeded"
            )
        return token

    async def rejected(self, token: str) -> bool:
        """``token`` got a 401: rotate once (shared by every caller); True if a new token exists."""
        await self._loaded()
        if token != self._current().access_token:
            return True  # another caller rotated meanwhile: just retry
        if self._task is not None:
            await self._join()
            return self._current().access_token != token
        if time.monotonic() - self._rejected_at < REJECT_COOLDOWN:
            log.warning(
                "token_rejected_again", hint="a fresh token was refused: app revoked or wrong campaign?"
            )
            return False
        self._rejected_at = time.monotonic()
        await self._rotate("rejected")
        return self._current().access_token != token

    # -- loading and saving -------------------------------------------------

    def _current(self) -> TokenPair:
        assert self._pair is not None, "used before _loaded()"
        return self._pair

    async def _loaded(self) -> TokenPair:
        if self._pair is None:
            # Waits for a helper a previous daemon left running (the lock).
            state = await asyncio.to_thread(self._read_locked)
            if self._pair is None:
                self._state = state
                self._pair = state.current if state else self._configured
                log.info(
                    "tokens_loaded",
                    source="state" if state else "configured",
                    expires_at=self._pair.expires_at,
                    path=str(self.state_dir / TOKENS_FILE),
                )
                self._gauge()
        return self._pair

    def _read_locked(self) -> TokenState | None:
        """(worker thread) The state file, read under the lock."""
        try:
            with state_lock(self.state_dir):
                remove_stale_temps(self.state_dir, TOKENS_FILE)
                return read_state(self.state_dir / TOKENS_FILE)
        except (TimeoutError, OSError) as exc:
            raise TokenRotationError(f"cannot read the token state: {exc}") from None

    def _write_locked(self, state: TokenState) -> str | None:
        """(worker thread) Write ``state``; None, or why it failed."""
        try:
            with state_lock(self.state_dir, wait=1.0):
                write_atomic(self.state_dir / TOKENS_FILE, state.encode(), mode=0o600)
        except (TimeoutError, OSError) as exc:
            return str(exc)
        return None

    async def _persist_unsaved(self) -> None:
        state = self._unsaved
        if state is None:
            return
        error = await asyncio.to_thread(self._write_locked, state)
        if error is not None:
            self._persist_at = time.monotonic() + RETRY_AFTER_FAILURE
            log.error("token_persist_failed", error=error, path=str(self.state_dir / TOKENS_FILE))
        elif self._unsaved is state:
            self._unsaved = None
            self._state = state
            log.info("token_persisted_late")

    # -- rotation (single flight) -------------------------------------------

    async def _join(self) -> None:
        task = self._task
        if task is not None:
            await asyncio.shield(task)

    async def _rotate(self, reason: str) -> None:
        if self._task is None:
            task = asyncio.create_task(self._rotation(reason), name="sponsord-token-rotation")
            self._task = task
            task.add_done_callback(self._rotation_done)
        await self._join()

    def _rotation_done(self, task: asyncio.Task[None]) -> None:
        if self._task is task:
            self._task = None
        if not task.cancelled():
            task.exception()  # every caller may have gone (shutdown): mark it seen

    def _candidates(self) -> list[TokenPair]:
        """Pairs whose refresh token may work, newest first, each refresh token once."""
        pairs = [self._current()]
        if self._state is not None:
            pairs.append(self._state.current)
            if self._state.previous is not None:
                pairs.append(self._state.previous)
        pairs.append(self._configured)
        unique: dict[str, TokenPair] = {}
        for pair in pairs:
            unique.setdefault(pair.refresh_token, pair)
        return list(unique.values())

    async def _rotation(self, reason: str) -> None:
        refusals = []
        for use in self._candidates():
            await self._budget.acquire()
            self.exchanges += 1
            expect = self._state.current.refresh_token if self._state else None
            result = await asyncio.to_thread(self._run_helper, use, expect)
            outcome = result.get("outcome")
            outcome = outcome if outcome in OUTCOMES else "malformed"
            error = str(result.get("error", ""))
            if outcome in ("rotated", "unsaved", "adopted"):
                try:
                    pair = TokenPair.from_json(result.get("pair"))
                    prev = result.get("previous")
                    state = TokenState(pair, None if prev is None else TokenPair.from_json(prev))
                except ValueError:
                    outcome, error = "malformed", "the token helper answered without a pair"
                else:
                    self._metrics.token_rotations.labels(outcome).inc()
                    self._adopt(state, outcome, reason, error)
                    return
            self._metrics.token_rotations.labels(outcome).inc()
            if outcome != "refused":
                self._retry_at = time.monotonic() + RETRY_AFTER_FAILURE
                log.warning("token_rotation_failed", reason=reason, outcome=outcome, error=error)
                raise TokenRotationError(f"token exchange {outcome}: {error}")
            refusals.append(error)
            log.warning("refresh_token_refused", reason=reason, error=error)
        self._retry_at = time.monotonic() + RETRY_AFTER_FAILURE
        log.error(
            "token_rotation_locked_out",
            hint="create a new refresh token in Patreon's developer portal, put it in "
            "PATREON_REFRESH_TOKEN (credentials/refresh_token) and restart",
        )
        raise TokenRotationError(
            f"Patreon refused every refresh token sponsord has ({'; '.join(refusals)}); "
            "set a new PATREON_REFRESH_TOKEN and restart"
        )

    def _adopt(self, state: TokenState, outcome: str, reason: str, error: str) -> None:
        self._pair = state.current
        if outcome == "unsaved":
            self._unsaved = state
            self._persist_at = time.monotonic() + RETRY_AFTER_FAILURE
            log.error("token_persist_failed", error=error, path=str(self.state_dir / TOKENS_FILE))
        else:
            self._state = state
            self._unsaved = None
        self._gauge()
        log.info("token_rotated", reason=reason, outcome=outcome, expires_at=state.current.expires_at)

    def _gauge(self) -> None:
        expires = self._pair.expires_at if self._pair else None
        if expires is not None:
            self._metrics.token_expiry.set(expires)

    def _run_helper(self, use: TokenPair, expect_current: str | None) -> dict[str, Any]:
        """Run one exchange in a helper process (in a worker thread); its answer."""
        request = {
            "api_base": self._api_base,
            "client_id": self._client_id.reveal(),
            "client_secret": self._client_secret.reveal(),
            "state_dir": str(self.state_dir),
            "timeout": self._timeout,
            "use": use.to_json(),
            "expect_current": expect_current,
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PATREON_", "NOTIFY_", "WATCHDOG_"))}
        # subprocess, not asyncio's: asyncio kills a child whose transport is
        # closed (a cancelled await at shutdown), and this one must finish.
        proc = subprocess.Popen(
            # -E -s: no PYTHON* variables, no user site; the working directory
            # (first on sys.path with -m) is the directory holding the package,
            # installed or in a source checkout, never the writable state dir.
            [sys.executable, "-E", "-s", "-m", "sponsord.tokens"],
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a Ctrl-C or a group kill of the daemon spares it
            close_fds=True,
        )
        try:
            out, _ = proc.communicate(json.dumps(request).encode(), timeout=self._timeout * 3 + LOCK_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return {"outcome": "unavailable", "error": "the token helper hung"}
        try:
            result = json.loads(out)
        except ValueError:
            return {"outcome": "malformed", "error": f"the token helper exited with {proc.returncode}"}
        return result if isinstance(result, dict) else {"outcome": "malformed", "error": "bad helper answer"}


if __name__ == "__main__":
    sys.exit(_helper_main())
