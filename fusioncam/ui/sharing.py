"""Shared links: a bounded, expiring store of kept explanations, each behind an unguessable token.

A link is ``ROOT/?share=TOKEN`` and holds nothing but the token: ``secrets.token_urlsafe`` draws
:data:`TOKEN_BYTES` random bytes (a 1 in 2¹⁴⁴ guess), so a token cannot be guessed, nor derived
from another link. The store keeps at most ``capacity`` entries, the least recently shared or
opened dropped first, and drops each entry ``ttl_s`` seconds after it was shared (no later than
the app drops the session it was copied from; ``app.SESSION_TTL_S``). An entry is the app's own
immutable kept copy of an explanation (never a snapshot of the page), so opening a link shows
that one explanation and nothing else of the session that shared it.

``FUSIONCAM_SHARING=0`` turns sharing off: nothing is stored and no link opens. The link's root is
the app's address as the visitor's browser sees it (:func:`public_root`).
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.route_utils import get_api_call_path, get_root_url

SHARING = "FUSIONCAM_SHARING"     # "0": the app neither makes nor opens links
SHARE_TTL_S = 3600                # a link expires this long after it was made (the app keeps sessions 1 h)
SHARE_CAPACITY = 256              # at most this many shared explanations are kept (a few MB each)
TOKEN_BYTES = 18                  # 144 random bits, 24 URL-safe characters
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{24}")
KINDS = ("explain", "compare")


def sharing_enabled() -> bool:
    """Whether this app makes and opens links (on unless :data:`SHARING` is ``0``)."""
    return os.environ.get(SHARING, "1").strip() != "0"


@dataclass(frozen=True)
class Shared:
    """One shared explanation: what it is (``kind``: an Explain-tab session or a comparison),
    the kept copy (``value``, immutable) and when the link stops working (``expires``, epoch s)."""

    kind: str
    value: Any
    expires: float


class ShareStore:
    """Tokens → :class:`Shared`, at most ``capacity`` of them, each for ``ttl_s`` seconds.

    Thread-safe. Sharing the very same kept copy again (the same object, still kept) returns its
    existing token and expiry, so pressing the button twice gives one link.
    """

    def __init__(self, capacity: int = SHARE_CAPACITY, ttl_s: float = SHARE_TTL_S,
                 clock: Callable[[], float] = time.time) -> None:
        if capacity < 1 or ttl_s <= 0:
            raise ValueError("a share store needs room for one entry and a positive lifetime")
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, Shared] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, kind: str, value: Any) -> tuple[str, Shared]:
        """Keep ``value`` (a kept copy of kind ``kind``) behind a new token; return both."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind of shared explanation {kind!r}; choose one of {', '.join(KINDS)}")
        with self._lock:
            self._drop_expired()
            for token, entry in self._entries.items():
                if entry.value is value and entry.kind == kind:
                    self._entries.move_to_end(token)
                    return token, entry
            token = secrets.token_urlsafe(TOKEN_BYTES)
            entry = Shared(kind, value, self._clock() + self.ttl_s)
            self._entries[token] = entry
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            return token, entry

    def get(self, token: object) -> Shared | None:
        """The entry behind ``token``; ``None`` for anything else: a malformed, tampered, unknown,
        expired or evicted token (the caller cannot tell which, and need not)."""
        if not isinstance(token, str) or not TOKEN_SHAPE.fullmatch(token):
            return None
        with self._lock:
            self._drop_expired()
            entry = self._entries.get(token)
            if entry is not None:
                self._entries.move_to_end(token)
            return entry

    def __len__(self) -> int:
        with self._lock:
            self._drop_expired()
            return len(self._entries)

    def _drop_expired(self) -> None:
        now = self._clock()
        for token in [token for token, entry in self._entries.items() if entry.expires <= now]:
            del self._entries[token]


SHARED = ShareStore()


def public_root(request: gr.Request | None) -> str:
    """The app's root URL as the visitor's browser sees it, without a trailing slash.

    Gradio's own rule (``gradio.route_utils.get_root_url``): a full-URL ``root_path`` wins; else
    ``X-Forwarded-Host`` (a proxy, such as a Space's) names the host, ``X-Forwarded-Proto: https``
    the scheme; else the request's own URL with the API route stripped, under a relative
    ``root_path`` (``GRADIO_ROOT_PATH``, or ``root_path`` given to ``launch``).
    """
    raw = getattr(request, "request", None)
    if raw is None:
        raise ValueError("A link needs the page's address, and this request came without one.")
    try:
        route = get_api_call_path(raw)
    except ValueError:
        route = ""
    root_path = getattr(raw.scope.get("app"), "root_path", None) or raw.scope.get("root_path") or None
    root = get_root_url(raw, route, root_path)
    if not root.startswith(("http://", "https://")):
        raise ValueError("A link needs the page's address, and this request came without one.")
    return root


def share_link(kind: str, value: Any, request: gr.Request | None) -> tuple[str, Shared]:
    """Keep ``value`` in :data:`SHARED` and return the absolute link that reopens it, and its entry."""
    if not sharing_enabled():
        raise ValueError("Sharing links is turned off on this app.")
    root = public_root(request)
    token, entry = SHARED.put(kind, value)
    return f"{root}/?share={token}", entry
