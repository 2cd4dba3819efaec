"""Slack alerts through an incoming webhook: message formatting, and delivery that never raises.

Alerts are how an operator learns that a backup, a restore drill or a canary went red, so two
properties matter more than looks:

* An alert is never silently dropped. When Slack cannot be reached (no webhook configured, Slack
  down, rate limited, timing out, a bad URL), the full alert text is written to the log at ERROR
  with the marker ``ALERT NOT DELIVERED`` and the caller gets ``delivered=False`` so it can try
  again later (a sensor records "sent" only after Slack accepted the message).
* Sending never raises. Alerting runs in failure paths; an exception there would replace the
  original failure with a Slack error and lose both.

This module is plain Python: the Dagster layer wraps it in a resource.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from slack_sdk.http_retry import (
    BackoffRetryIntervalCalculator,
    ConnectionErrorRetryHandler,
    HttpRequest,
    HttpResponse,
    RateLimitErrorRetryHandler,
    RetryHandler,
    RetryState,
)
from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler
from slack_sdk.webhook import WebhookClient

logger = logging.getLogger(__name__)

AlertStatus = Literal["failure", "warning", "resolved", "success"]
ALERT_STATUSES: tuple[str, ...] = get_args(AlertStatus)

NOT_DELIVERED_MARKER = "ALERT NOT DELIVERED"
NO_WEBHOOK_REASON = "SLACK_WEBHOOK_URL is not set"

# Slack's documented Block Kit limits. Exceeding any of them makes Slack reject the whole
# message with `invalid_blocks`, so every piece of text is fitted before it is sent.
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_FIELD_TEXT = 2000
MAX_FIELDS_PER_SECTION = 10
MAX_HEADER_TEXT = 150
MAX_FALLBACK_TEXT = 3000

TRUNCATION_MARKER = "… [truncated {dropped} characters]"

_STATUS_STYLE: dict[str, tuple[str, str]] = {
    "failure": (":red_circle:", "FAILURE"),
    "warning": (":warning:", "WARNING"),
    "resolved": (":large_green_circle:", "RESOLVED"),
    "success": (":white_check_mark:", "SUCCESS"),
}


@dataclass(frozen=True)
class Alert:
    """One message for humans: what happened, the facts to judge it, and where to look next.

    ``details`` are lines worth copying (run ids, tenant ids, object keys) and ``query`` is SQL a
    DBA can paste to investigate; both are shown as code blocks so Slack does not reformat them.
    ``links`` are (label, url) pairs such as the Dagster run and the runbook section.
    """

    title: str
    status: AlertStatus
    summary: str
    fields: Sequence[tuple[str, str]] = ()
    details: Sequence[str] = ()
    query: str | None = None
    links: Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        if self.status not in ALERT_STATUSES:
            raise ValueError(
                f"Alert status must be one of {', '.join(ALERT_STATUSES)}; got {self.status!r}."
            )


@dataclass(frozen=True)
class DeliveryResult:
    """Outcome of one ``send``: ``delivered`` is True only when Slack answered 200 ``ok``."""

    delivered: bool
    status: int | None
    detail: str


# --- formatting ---------------------------------------------------------------------------------


def _escape(text: str) -> str:
    # Slack parses &, < and > in mrkdwn; escaping them keeps data such as a tenant name
    # containing "<!channel>" from turning into a mention or a broken link.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _fit(raw: str, limit: int, *, prefix: str = "", suffix: str = "", escape: bool = True) -> str:
    """Escape ``raw`` and cut it so ``prefix + text + suffix`` fits ``limit``, saying what was cut.

    Cutting the raw text (not the escaped one) keeps an entity like ``&amp;`` from being split;
    the prefix/suffix are kept whole so a truncated code block is still closed.
    """
    render = _escape if escape else (lambda s: s)
    full = prefix + render(raw) + suffix
    if len(full) <= limit:
        return full
    keep = len(raw)
    while True:
        marker = TRUNCATION_MARKER.format(dropped=len(raw) - keep)
        candidate = prefix + render(raw[:keep]) + marker + suffix
        excess = len(candidate) - limit
        if excess <= 0 or keep == 0:
            return candidate[:limit] if excess > 0 else candidate
        keep = max(0, keep - excess)


def _code_block(text: str) -> str:
    # A literal ``` inside the text would close the block early; a zero-width space defuses it.
    return text.replace("```", "`\u200b``")


def _link(label: str, url: str) -> str:
    # Inside <url|label> a "|" or ">" in the label would end the link early.
    safe_label = _escape(label).replace("|", "¦")
    safe_url = url.replace(" ", "%20").replace(">", "%3E").replace("|", "%7C")
    return f"<{safe_url}|{safe_label}>"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def format_fallback_text(alert: Alert) -> str:
    """The top-level ``text``: what notifications, screen readers and old clients show."""
    _, label = _STATUS_STYLE[alert.status]
    return _fit(f"{label}: {alert.title}: {alert.summary}", MAX_FALLBACK_TEXT)


def format_slack_payload(alert: Alert) -> dict[str, Any]:
    """Build the webhook JSON: Block Kit blocks plus a plain ``text`` fallback.

    Every limit Slack enforces is respected here, because one oversized block makes Slack refuse
    the whole message. When there are too many fields for 50 blocks, the fields are cut (with a
    note) rather than the links and investigation details an operator needs first.
    """
    emoji, label = _STATUS_STYLE[alert.status]
    head: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _fit(f"{emoji} {alert.title}", MAX_HEADER_TEXT, escape=False),
                "emoji": True,
            },
        },
        _section(_fit(alert.summary, MAX_SECTION_TEXT, prefix=f"*{label}*: ")),
    ]

    field_blocks: list[dict[str, Any]] = []
    for start in range(0, len(alert.fields), MAX_FIELDS_PER_SECTION):
        chunk = alert.fields[start : start + MAX_FIELDS_PER_SECTION]
        field_blocks.append(
            {
                "type": "section",
                "fields": [
                    {
                        "type": "mrkdwn",
                        "text": _fit(str(value), MAX_FIELD_TEXT, prefix=f"*{_escape(name)}*\n"),
                    }
                    for name, value in chunk
                ],
            }
        )

    tail: list[dict[str, Any]] = []
    if alert.details:
        details = _code_block("\n".join(str(line) for line in alert.details))
        tail.append(_section(_fit(details, MAX_SECTION_TEXT, prefix="```\n", suffix="\n```")))
    if alert.query:
        query = _code_block(alert.query.strip())
        tail.append(
            _section(
                _fit(query, MAX_SECTION_TEXT, prefix="*Investigate with:*\n```\n", suffix="\n```")
            )
        )
    if alert.links:
        links = "  |  ".join(_link(name, url) for name, url in alert.links)
        # Cutting inside a <url|label> would leave a broken link, so drop whole links instead.
        while len(links) > MAX_SECTION_TEXT and "  |  " in links:
            links = links.rsplit("  |  ", 1)[0]
        tail.append(_section(links[:MAX_SECTION_TEXT]))

    room = MAX_BLOCKS - len(head) - len(tail)
    if len(field_blocks) > room:
        kept = field_blocks[: room - 1]
        shown = sum(len(block["fields"]) for block in kept)
        omitted = len(alert.fields) - shown
        note = {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"… {omitted} more fields not shown "
                    f"(a Slack message holds at most {MAX_BLOCKS} blocks).",
                }
            ],
        }
        field_blocks = [*kept, note]

    return {"text": format_fallback_text(alert), "blocks": [*head, *field_blocks, *tail]}


def alert_as_text(alert: Alert) -> str:
    """The whole alert as untruncated plain text, for the log when Slack does not get it."""
    _, label = _STATUS_STYLE[alert.status]
    lines = [f"[{label}] {alert.title}", alert.summary]
    lines += [f"{name}: {value}" for name, value in alert.fields]
    if alert.details:
        lines.append("details:")
        lines += [f"  {line}" for line in alert.details]
    if alert.query:
        lines += ["investigate with:", alert.query.strip()]
    lines += [f"{name}: {url}" for name, url in alert.links]
    return "\n".join(lines)


# --- delivery -----------------------------------------------------------------------------------


class _ServerErrorRetryHandler(ServerErrorRetryHandler):
    """slack_sdk's handler retries only 500 and 503; a gateway's 502 or 504 is just as transient."""

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and response.status_code in (500, 502, 503, 504)


class _BoundedRateLimitRetryHandler(RateLimitErrorRetryHandler):
    """Honours ``Retry-After`` on 429, but gives up instead of sleeping longer than ``max_wait``.

    The stock handler sleeps for whatever Slack asks and crashes on a non-integer header. Alerts
    are sent from sensor ticks that have their own deadline, so a long wait is worse than an
    undelivered alert that is logged and retried on the next tick.
    """

    def __init__(self, max_retry_count: int, max_wait: float) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    @staticmethod
    def _retry_after(response: HttpResponse) -> float:
        for name, values in response.headers.items():
            if name.lower() == "retry-after" and values:
                try:
                    return max(0.0, float(values[0]))
                except ValueError:
                    break
        return 1.0

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return (
            response is not None
            and response.status_code == 429
            and self._retry_after(response) <= self.max_wait
        )

    def prepare_for_next_attempt(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        assert response is not None  # _can_retry only accepts 429 responses
        state.next_attempt_requested = True
        time.sleep(self._retry_after(response) + random.random() * 0.2)
        state.increment_current_attempt()


class SlackNotifier:
    """Posts alerts to one Slack incoming webhook; ``send`` reports the outcome instead of raising.

    Retries (at most ``max_retries`` in total) cover what is worth retrying: connection errors,
    429 with ``Retry-After``, and 5xx answers. A read timeout is not retried: Slack may already
    have posted the message, and retrying would multiply the time a sensor tick waits; the caller
    sees ``delivered=False`` and can try again on its next tick.
    """

    def __init__(
        self,
        webhook_url: str | None,
        timeout: float = 10,
        max_retries: int = 3,
        *,
        backoff_factor: float = 0.5,
        max_retry_after: float = 30,
    ) -> None:
        self.webhook_url = webhook_url or None
        self.timeout = timeout
        self.max_retries = max_retries
        self._client: WebhookClient | None = None
        if self.webhook_url is not None:
            handlers: list[RetryHandler] = [
                ConnectionErrorRetryHandler(
                    max_retry_count=max_retries,
                    interval_calculator=BackoffRetryIntervalCalculator(backoff_factor),
                ),
                _BoundedRateLimitRetryHandler(max_retries, max_retry_after),
                _ServerErrorRetryHandler(
                    max_retry_count=max_retries,
                    interval_calculator=BackoffRetryIntervalCalculator(backoff_factor),
                ),
            ]
            self._client = WebhookClient(
                url=self.webhook_url,
                timeout=timeout,  # type: ignore[arg-type]  # urllib accepts a float
                retry_handlers=handlers,
            )
            # WebhookClient copies HTTPS_PROXY into an explicit proxy, which ignores NO_PROXY;
            # leaving it unset lets urllib apply the environment's proxy rules itself.
            self._client.proxy = None

    def __repr__(self) -> str:
        # The webhook URL is a credential: anyone holding it can post to the channel.
        state = "configured" if self.webhook_url else "not configured"
        return (
            f"SlackNotifier(webhook {state}, timeout={self.timeout}, "
            f"max_retries={self.max_retries})"
        )

    @property
    def configured(self) -> bool:
        return self._client is not None

    def send(self, alert: Alert) -> DeliveryResult:
        """Post ``alert``; on any failure log it as NOT DELIVERED and return ``delivered=False``."""
        if self._client is None:
            return self._not_delivered(alert, None, NO_WEBHOOK_REASON)
        try:
            payload = format_slack_payload(alert)
            response = self._client.send_dict(payload)
            if response.status_code == 400 and response.body.startswith("invalid_blocks"):
                # Blocks Slack will not render must not cost the alert: send the text alone.
                logger.warning("Slack refused the blocks (%s); resending as text.", response.body)
                response = self._client.send_dict({"text": alert_as_text(alert)[:40000]})
        except Exception as error:  # sending must never raise, whatever broke
            return self._not_delivered(alert, None, self._describe(error))
        body = (response.body or "").strip()
        if response.status_code == 200 and body == "ok":
            return DeliveryResult(delivered=True, status=200, detail="ok")
        return self._not_delivered(
            alert, response.status_code, f"Slack answered {response.status_code}: {body[:200]!r}"
        )

    def _describe(self, error: Exception) -> str:
        text = f"{type(error).__name__}: {error}"
        if isinstance(error, TimeoutError):
            text = f"no answer within {self.timeout:g}s ({text})"
        if self.webhook_url:
            text = text.replace(self.webhook_url, "<webhook url>")
        return text

    @staticmethod
    def _not_delivered(alert: Alert, status: int | None, detail: str) -> DeliveryResult:
        logger.error("%s (%s)\n%s", NOT_DELIVERED_MARKER, detail, alert_as_text(alert))
        return DeliveryResult(delivered=False, status=status, detail=detail)
