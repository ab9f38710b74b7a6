"""Typed application keys shared by the routes (see aiohttp's ``web.AppKey``)."""

from __future__ import annotations

from aiohttp import web

from .config import Config
from .hub import ClientLimits, Hub
from .metrics import Metrics
from .proxies import ClientAddresses, Network
from .refresher import Refresher
from .upstream import Upstream

CONFIG = web.AppKey("config", Config)
HUB = web.AppKey("hub", Hub)
METRICS = web.AppKey("metrics", Metrics)
LIMITS = web.AppKey("limits", ClientLimits)
ADDRESSES = web.AppKey("addresses", ClientAddresses)
REFRESHER = web.AppKey("refresher", Refresher)
UPSTREAM = web.AppKey("upstream", Upstream)
METRICS_ALLOW = web.AppKey("metrics_allow", tuple[Network, ...])
EMBED_JS = web.AppKey("embed_js", bytes)
