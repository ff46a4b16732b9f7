"""Delivering the notice outbox (law/holder_notice.py) through a pluggable channel.

A channel takes one notice and says where it went, or raises `DeliveryFailed`:

* `SpoolChannel` (the default) writes a printable notice, UTF-8 text, one file per
  notice under the spool directory, for the post room. It is *delivered* when
  written; it is *sent* when an operator says so (`jpki-va registry notices
  mark-sent`), after mailing it.
* `WebhookChannel` POSTs the notice as JSON to a configured URL (a mailing service,
  the municipality's system); a 2xx answer takes it over, so it is sent then.

`NoticeDispatcher.deliver_pending` hands each notice not yet delivered to the
channel and records the outcome in the registry; a failed delivery is tried again at
the next round, and is logged once per failing stretch, not once per round.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from jpki_va.core.clock import Clock
from jpki_va.server.base.private_files import private_dir, write_private
from jpki_va.server.model.registry_values import HolderNotice
from jpki_va.server.registry.transactions import Registry

log = logging.getLogger(__name__)


class DeliveryFailed(Exception):
    """The channel did not take the notice; it stays in the outbox for the next round."""


class NoticeChannel(Protocol):
    #: Whether a delivery through this channel is also the sending (no operator step).
    sends: bool

    def deliver(self, notice: HolderNotice) -> str:
        """Hand over one notice; returns where it went (kept with the notice)."""
        ...


def printable(notice: HolderNotice) -> str:
    """The notice as a letter: addressee, the text the article requires, the reference."""
    return (
        f"〒 {notice.municipality_code}\n{notice.address}\n{notice.name} 様\n\n"
        f"{notice.text}\n"
        f"通知番号 {notice.id} / 発行の番号 {notice.serial:X} / {notice.kind.name}\n"
    )


def webhook_body(notice: HolderNotice) -> dict[str, object]:
    """What the webhook receives: the notice without the resident code."""
    data = notice.to_json()
    del data["resident_code"], data["delivered_at"], data["delivery"], data["sent_at"]
    return {"id": notice.id, **data, "serial": f"{notice.serial:X}"}


class SpoolChannel:
    sends = False

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def deliver(self, notice: HolderNotice) -> str:
        name = f"notice-{notice.id:08d}.txt"
        try:
            private_dir(self._dir)  # names and addresses: for the signer's user only
            write_private(self._dir / name, printable(notice).encode())
        except OSError as exc:
            raise DeliveryFailed(f"cannot write {self._dir / name}: {exc}") from None
        return f"spool:{name}"


class WebhookChannel:
    sends = True

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the notice webhook must be an http(s) URL, got {url!r}")
        self._url = url
        self._timeout = timeout

    def deliver(self, notice: HolderNotice) -> str:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self._url,
            data=json.dumps(webhook_body(notice), ensure_ascii=False).encode(),
            headers={"Content-Type": "application/json; charset=utf-8"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as reply:  # noqa: S310
                status = int(reply.status)
        except urllib.error.HTTPError as exc:
            raise DeliveryFailed(f"the webhook answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise DeliveryFailed(f"the webhook is unreachable: {exc}") from None
        if not 200 <= status < 300:
            raise DeliveryFailed(f"the webhook answered HTTP {status}")
        return f"webhook:HTTP {status}"


class NoticeDispatcher:
    def __init__(self, registry: Registry, channel: NoticeChannel, clock: Clock) -> None:
        self._registry = registry
        self._channel = channel
        self._clock = clock
        self._failing = False

    def deliver_pending(self) -> int:
        """Deliver every notice not yet delivered; how many were."""
        with self._registry.read() as tx:
            due = [n for n in tx.notices(pending_only=True) if n.delivered_at is None]
        delivered = 0
        for notice in due:
            try:
                where = self._channel.deliver(notice)
            except DeliveryFailed as exc:
                if not self._failing:
                    log.warning("notice %d not delivered, retrying: %s", notice.id, exc)
                self._failing = True
                return delivered
            now = self._clock.now()
            done = replace(
                notice,
                delivered_at=now,
                delivery=where,
                sent_at=now if self._channel.sends else None,
            )
            with self._registry.write() as tx:
                tx.update_notice(done)
            delivered += 1
            log.info("notice %d delivered: %s", notice.id, where)
        if self._failing:
            log.info("notices are delivered again")
        self._failing = False
        return delivered
