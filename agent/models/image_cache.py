"""Each screenshot's bytes sent to a model server once: images named by uuid, and what each server holds.

vLLM (0.32 here; ``vllm/renderers/chat_utils.py``) lets an image content part carry ``"uuid"`` beside
``image_url``; it caches the processed image under that uuid, and a later part may give the uuid alone
(``{"type": "image_url", "image_url": null, "uuid": U}``). An agent re-sends its whole history each step, so from
the second step on only the new screenshot needs its bytes.

The uuid is a hash of the image's data URL (its MIME type and bytes): the same screenshot always gets the same uuid,
different ones never share one. Per server (base URL) this module keeps:

- ``mode``: ``"uuid"`` (send images already held by uuid alone), ``"plain"`` (no uuids at all: today's requests;
  for servers that are not vLLM, or that refused uuids) or ``None`` (not known yet);
- ``held``: the uuids whose data the server received in a request that succeeded (bounded, oldest dropped).

When a request that named images by uuid alone is refused because the server does not hold one of them (vLLM 0.32:
``Cache miss for image at index N but data is not provided.``, after a restart or an eviction from its cache),
``held`` is emptied and the request sent again once with every image's data. Any other unclassified 4xx to a request
with uuids (a server that rejects the field) is answered by sending it once more without uuids; when that succeeds
the server is remembered as ``"plain"``.
"""
from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from typing import Any, Literal

ResendImages = Literal["auto", "always"]
RESEND_CHOICES: tuple[str, ...] = ("auto", "always")

# vLLM 0.32: an image part given by uuid alone whose uuid its multimodal cache does not hold.
CACHE_MISS_RE = re.compile(r"Cache miss for (?:image|\w+) at index \d+ but data is not provided", re.IGNORECASE)
_HELD_LIMIT = 4096  # uuids remembered per server; vLLM's own cache (4 GiB by default) evicts long before this
_ID_MEMO_LIMIT = 512


def uuid_of(url: str) -> str:
    """A stable identity for an image given as a data URL: a hash of its MIME type and bytes."""
    return "kcua-" + hashlib.blake2b(url.encode("ascii", "surrogateescape"), digest_size=16).hexdigest()


class _UuidMemo:
    """uuid_of() by string identity: the history hands the same data-URL strings to every request, so each is
    hashed once (0.55 MB of base64 per 1080p screenshot)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: OrderedDict[int, tuple[str, str]] = OrderedDict()

    def __call__(self, url: str) -> str:
        key = id(url)
        with self._lock:
            hit = self._by_id.get(key)
            if hit is not None and hit[0] is url:
                self._by_id.move_to_end(key)
                return hit[1]
        value = uuid_of(url)
        with self._lock:
            self._by_id[key] = (url, value)  # keeps the string alive, so its id is not reused while memoized
            while len(self._by_id) > _ID_MEMO_LIMIT:
                self._by_id.popitem(last=False)
        return value


_memo = _UuidMemo()


class ServerImages:
    """What one server is known to support and to hold. Thread-safe; shared by every client of that base URL."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.lock = threading.Lock()
        self.mode: Literal["uuid", "plain"] | None = None
        self.held: OrderedDict[str, None] = OrderedDict()
        self.resent = 0  # requests sent again with data after a cache miss (for the session)
        self.refused_uuids = 0  # requests sent again without uuids (the server refused them)

    def holds(self, uuid: str) -> bool:
        with self.lock:
            return uuid in self.held

    def remember(self, uuids: list[str]) -> None:
        with self.lock:
            for u in uuids:
                self.held[u] = None
                self.held.move_to_end(u)
            while len(self.held) > _HELD_LIMIT:
                self.held.popitem(last=False)

    def forget_all(self) -> None:
        with self.lock:
            self.held.clear()


_servers: dict[str, ServerImages] = {}
_servers_lock = threading.Lock()


def server_images(base_url: str) -> ServerImages:
    """The knowledge about the server at ``base_url`` (one object per URL for the process)."""
    key = base_url.rstrip("/")
    with _servers_lock:
        state = _servers.get(key)
        if state is None:
            state = _servers[key] = ServerImages(key)
        return state


def forget_servers() -> None:
    """Drop all per-server knowledge (tests)."""
    with _servers_lock:
        _servers.clear()


class Prepared:
    """The messages as sent, and what they carry."""

    __slots__ = ("messages", "with_data", "by_uuid", "data_chars")

    def __init__(self, messages: list[dict[str, Any]], with_data: list[str], by_uuid: list[str],
                 data_chars: int) -> None:
        self.messages = messages
        self.with_data = with_data  # uuids of the images sent with their bytes
        self.by_uuid = by_uuid  # uuids of the images named by uuid alone
        self.data_chars = data_chars  # characters of image data URLs in the request


def _image_url(part: Any) -> str | None:
    if not isinstance(part, dict) or part.get("type") != "image_url":
        return None
    inner = part.get("image_url")
    url = inner.get("url") if isinstance(inner, dict) else inner
    return url if isinstance(url, str) and url.startswith("data:") else None


def prepare(messages: list[dict[str, Any]], state: ServerImages | None, *,
            how: Literal["plain", "data", "uuid"]) -> Prepared:
    """The request's messages for ``how``: ``plain`` leaves them as they are; ``data`` adds each data-URL image's
    uuid; ``uuid`` also gives images the server holds by uuid alone. The caller's messages are never changed."""
    with_data: list[str] = []
    by_uuid: list[str] = []
    chars = 0
    if how == "plain":
        for message in messages:
            content = message.get("content")
            for part in content if isinstance(content, list) else []:
                if (url := _image_url(part)) is not None:
                    chars += len(url)
        return Prepared(messages, with_data, by_uuid, chars)
    out: list[dict[str, Any]] = []
    in_request: set[str] = set()
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list) or not any(_image_url(p) is not None for p in content):
            out.append(message)
            continue
        parts: list[Any] = []
        for part in content:
            url = _image_url(part)
            if url is None:
                parts.append(part)
                continue
            uuid = _memo(url)
            if how == "uuid" and state is not None and state.holds(uuid):
                parts.append({"type": "image_url", "image_url": None, "uuid": uuid})
                by_uuid.append(uuid)
            else:
                parts.append({**part, "uuid": uuid})
                with_data.append(uuid)
                chars += len(url)
            in_request.add(uuid)
        out.append({**message, "content": parts})
    return Prepared(out, with_data, by_uuid, chars)


def is_cache_miss(message: str) -> bool:
    return bool(CACHE_MISS_RE.search(message))


_ABOUT_IMAGE_PART_RE = re.compile(r"image_url|null|none|missing|required|validation|content part", re.IGNORECASE)


def refuses_uuids(message: str, *, named: bool) -> bool:
    """Whether a refusal is about the uuids: it names them, or (when the request gave images by uuid alone) it is
    about the image parts. Any other refusal is the request's own and is not sent again."""
    return "uuid" in message.lower() or (named and bool(_ABOUT_IMAGE_PART_RE.search(message)))
