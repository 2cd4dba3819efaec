"""Slack alert formatting and delivery, over real HTTP to a local webhook receiver.

The guarantees under test: an alert reaches Slack when Slack is merely flaky (500, 429), and when
Slack is really gone the alert is logged as NOT DELIVERED instead of raising or vanishing.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import pytest

from hardening_pipeline.alerts.slack import (
    MAX_BLOCKS,
    MAX_FIELD_TEXT,
    MAX_FIELDS_PER_SECTION,
    MAX_HEADER_TEXT,
    MAX_SECTION_TEXT,
    NOT_DELIVERED_MARKER,
    Alert,
    SlackNotifier,
    alert_as_text,
    format_slack_payload,
)
from tests.support.slack_receiver import (
    HANG,
    INVALID_BLOCKS,
    RATE_LIMITED,
    SERVER_ERROR,
    SlackReceiver,
)

RUN_URL = "http://localhost:3000/runs/6f1c2d3e"
RUNBOOK_URL = "https://example.org/docs/runbook.md#backup-failed"


def backup_failed_alert(**overrides: Any) -> Alert:
    values: dict[str, Any] = {
        "title": "Nightly backup failed",
        "status": "failure",
        "summary": "Tenant acme could not be exported: connection reset by peer.",
        "fields": [("Backup id", "2026-03-01T020000Z-7f3a"), ("Tenants done", "41 of 42")],
        "details": ["run_id=6f1c2d3e", "tenant_id=7c9e6679-7425-40de-944b-e07fc1f90ae7"],
        "query": "SELECT count(*) FROM messages WHERE tenant_id = '7c9e6679';",
        "links": [("Open run in Dagster", RUN_URL), ("Runbook", RUNBOOK_URL)],
    }
    values.update(overrides)
    return Alert(**values)


def fast_notifier(url: str | None, **kwargs: Any) -> SlackNotifier:
    kwargs.setdefault("timeout", 5)
    kwargs.setdefault("backoff_factor", 0.01)
    return SlackNotifier(url, **kwargs)


def all_texts(payload: dict[str, Any]) -> list[str]:
    texts = []
    for block in payload["blocks"]:
        if "text" in block:
            texts.append(block["text"]["text"])
        texts += [f["text"] for f in block.get("fields", [])]
        texts += [e["text"] for e in block.get("elements", [])]
    return texts


def not_delivered_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and NOT_DELIVERED_MARKER in r.getMessage()
    ]


# --- payload ------------------------------------------------------------------------------------


def test_payload_arrives_field_by_field(slack_receiver: SlackReceiver) -> None:
    result = fast_notifier(slack_receiver.url).send(backup_failed_alert())

    assert result.delivered is True
    assert (result.status, result.detail) == (200, "ok")
    assert len(slack_receiver.requests) == 1
    assert slack_receiver.headers[0]["Content-Type"].startswith("application/json")
    body = slack_receiver.requests[0]
    assert body["text"] == (
        "FAILURE: Nightly backup failed: "
        "Tenant acme could not be exported: connection reset by peer."
    )
    header, summary, fields, details, query, links = body["blocks"]
    assert header == {
        "type": "header",
        "text": {"type": "plain_text", "text": ":red_circle: Nightly backup failed", "emoji": True},
    }
    assert summary == {
        "type": "section",
        "text": {
            "type": "mrkdwn",
            "text": "*FAILURE*: Tenant acme could not be exported: connection reset by peer.",
        },
    }
    assert fields["type"] == "section"
    assert fields["fields"] == [
        {"type": "mrkdwn", "text": "*Backup id*\n2026-03-01T020000Z-7f3a"},
        {"type": "mrkdwn", "text": "*Tenants done*\n41 of 42"},
    ]
    assert details["text"]["text"] == (
        "```\nrun_id=6f1c2d3e\ntenant_id=7c9e6679-7425-40de-944b-e07fc1f90ae7\n```"
    )
    assert query["text"]["text"] == (
        "*Investigate with:*\n```\nSELECT count(*) FROM messages WHERE tenant_id = '7c9e6679';\n```"
    )
    assert links["text"]["text"] == f"<{RUN_URL}|Open run in Dagster>  |  <{RUNBOOK_URL}|Runbook>"


@pytest.mark.parametrize(
    ("status", "emoji", "label"),
    [
        ("failure", ":red_circle:", "FAILURE"),
        ("warning", ":warning:", "WARNING"),
        ("resolved", ":large_green_circle:", "RESOLVED"),
        ("success", ":white_check_mark:", "SUCCESS"),
    ],
)
def test_each_status_is_labelled(status: str, emoji: str, label: str) -> None:
    payload = format_slack_payload(Alert(title="Drill", status=status, summary="done"))  # type: ignore[arg-type]
    assert payload["blocks"][0]["text"]["text"] == f"{emoji} Drill"
    assert payload["blocks"][1]["text"]["text"] == f"*{label}*: done"
    assert payload["text"].startswith(f"{label}: Drill")


def test_minimal_alert_has_no_empty_blocks() -> None:
    payload = format_slack_payload(Alert(title="Backup ok", status="success", summary="42 tenants"))
    assert [b["type"] for b in payload["blocks"]] == ["header", "section"]


def test_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="failure, warning, resolved, success"):
        Alert(title="x", status="red", summary="y")  # type: ignore[arg-type]


def test_data_cannot_inject_mentions_or_links() -> None:
    alert = Alert(
        title="Canary <b>",
        status="warning",
        summary="tenant named <!channel> & <http://evil|click>",
        fields=[("<!here>", "a > b")],
        links=[("Run | now > later", "http://localhost:3000/runs/1?x=a b")],
    )
    payload = format_slack_payload(alert)
    texts = all_texts(payload)
    assert "tenant named &lt;!channel&gt; &amp; &lt;http://evil|click&gt;" in texts[1]
    assert payload["blocks"][2]["fields"][0]["text"] == "*&lt;!here&gt;*\na &gt; b"
    assert payload["blocks"][-1]["text"]["text"] == (
        "<http://localhost:3000/runs/1?x=a%20b|Run ¦ now &gt; later>"
    )
    assert "<!channel>" not in payload["text"]


def test_long_texts_are_truncated_with_a_marker() -> None:
    alert = backup_failed_alert(
        title="T" * 400,
        summary="x" * 10_000,
        fields=[("Error", "e" * 5_000)],
        details=[f"tenant_id={i:08d}" for i in range(2_000)],
        query="SELECT 1;\n" * 1_000,
    )
    payload = format_slack_payload(alert)
    header, summary, fields, details, query, _links = payload["blocks"]

    assert len(header["text"]["text"]) <= MAX_HEADER_TEXT
    assert len(summary["text"]["text"]) <= MAX_SECTION_TEXT
    assert "[truncated" in summary["text"]["text"]
    assert summary["text"]["text"].startswith("*FAILURE*: xxx")
    assert len(fields["fields"][0]["text"]) <= MAX_FIELD_TEXT
    assert "[truncated" in fields["fields"][0]["text"]
    # A truncated code block must still be closed, or the rest of the message renders as code.
    for block in (details, query):
        text = block["text"]["text"]
        assert len(text) <= MAX_SECTION_TEXT
        assert "[truncated" in text
        assert text.endswith("\n```")
    assert len(payload["text"]) <= MAX_SECTION_TEXT


def test_truncation_counts_what_was_dropped() -> None:
    payload = format_slack_payload(Alert(title="t", status="failure", summary="x" * 4000))
    text = payload["blocks"][1]["text"]["text"]
    kept = text.count("x")
    assert f"[truncated {4000 - kept} characters]" in text


def test_truncation_never_splits_an_escaped_entity() -> None:
    payload = format_slack_payload(Alert(title="t", status="failure", summary="&" * 5000))
    text = payload["blocks"][1]["text"]["text"]
    body = text.removeprefix("*FAILURE*: ").split("…")[0]
    assert body == "&amp;" * (len(body) // 5)


def test_code_fence_in_details_cannot_close_the_block() -> None:
    payload = format_slack_payload(
        Alert(title="t", status="failure", summary="s", details=["a```b"])
    )
    assert payload["blocks"][2]["text"]["text"].count("```") == 2


def test_many_fields_stay_within_fifty_blocks_and_keep_the_links() -> None:
    alert = backup_failed_alert(fields=[(f"tenant {i}", "failed") for i in range(1_000)])
    payload = format_slack_payload(alert)
    blocks = payload["blocks"]

    assert len(blocks) == MAX_BLOCKS
    assert all(len(b.get("fields", [])) <= MAX_FIELDS_PER_SECTION for b in blocks)
    assert blocks[-1]["text"]["text"].startswith(f"<{RUN_URL}|")
    notes = [b for b in blocks if b["type"] == "context"]
    assert len(notes) == 1
    shown = sum(len(b.get("fields", [])) for b in blocks)
    assert notes[0]["elements"][0]["text"].startswith(f"… {1_000 - shown} more fields not shown")


def test_plain_text_rendering_keeps_everything() -> None:
    alert = backup_failed_alert(summary="s" * 10_000)
    text = alert_as_text(alert)
    assert "s" * 10_000 in text
    for needle in ("Nightly backup failed", "41 of 42", "tenant_id=7c9e6679", RUNBOOK_URL):
        assert needle in text


# --- delivery -----------------------------------------------------------------------------------


def test_retries_a_500_then_delivers(slack_receiver: SlackReceiver) -> None:
    slack_receiver.respond_with([SERVER_ERROR])

    result = fast_notifier(slack_receiver.url).send(backup_failed_alert())

    assert result.delivered is True
    assert len(slack_receiver.requests) == 2
    assert slack_receiver.requests[0] == slack_receiver.requests[1]


def test_honours_retry_after_on_429(slack_receiver: SlackReceiver) -> None:
    slack_receiver.respond_with([RATE_LIMITED])

    result = fast_notifier(slack_receiver.url).send(backup_failed_alert())

    assert result.delivered is True
    assert len(slack_receiver.requests) == 2
    first, second = slack_receiver.request_times
    assert second - first >= 1.0  # the receiver said Retry-After: 1


def test_retry_after_longer_than_allowed_is_not_waited_for(
    slack_receiver: SlackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    slack_receiver.respond_with([RATE_LIMITED])

    started = time.monotonic()
    result = fast_notifier(slack_receiver.url, max_retry_after=0.5).send(backup_failed_alert())

    assert result.delivered is False
    assert result.status == 429
    assert time.monotonic() - started < 1.0
    assert len(slack_receiver.requests) == 1
    assert not_delivered_logs(caplog)


def test_persistent_500_is_logged_not_delivered(
    slack_receiver: SlackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    slack_receiver.respond_with([SERVER_ERROR] * 10)

    result = fast_notifier(slack_receiver.url, max_retries=2).send(backup_failed_alert())

    assert result.delivered is False
    assert result.status == 500
    assert "internal_error" in result.detail
    assert len(slack_receiver.requests) == 3  # the first try and two retries
    (message,) = not_delivered_logs(caplog)
    # The log must carry the alert itself, so an operator reading it loses nothing.
    for needle in ("Nightly backup failed", "connection reset by peer", "tenant_id=7c9e6679"):
        assert needle in message
    assert slack_receiver.url not in caplog.text  # the webhook URL is a credential


def test_timeout_is_not_delivered_in_bounded_time(
    slack_receiver: SlackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    slack_receiver.respond_with([HANG])

    started = time.monotonic()
    result = fast_notifier(slack_receiver.url, timeout=1).send(backup_failed_alert())
    elapsed = time.monotonic() - started

    assert result.delivered is False
    assert result.status is None
    assert "no answer within 1s" in result.detail
    assert 0.9 <= elapsed < 5
    assert len(slack_receiver.requests) == 1
    assert not_delivered_logs(caplog)


def test_unreachable_port_is_not_delivered(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port now, so every connection is refused.
    started = time.monotonic()
    result = fast_notifier(f"http://127.0.0.1:{port}/services/x", max_retries=2).send(
        backup_failed_alert()
    )

    assert result.delivered is False
    assert result.status is None
    assert "refused" in result.detail.lower()
    assert time.monotonic() - started < 10
    assert not_delivered_logs(caplog)


def test_malformed_url_is_not_delivered_and_not_echoed(caplog: pytest.LogCaptureFixture) -> None:
    result = fast_notifier("hooks.slack.example/services/SECRET").send(backup_failed_alert())

    assert result.delivered is False
    assert "SECRET" not in result.detail
    assert not_delivered_logs(caplog)


def test_without_webhook_the_alert_is_logged_as_not_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = SlackNotifier(None)

    result = notifier.send(backup_failed_alert())

    assert result.delivered is False
    assert result.status is None
    assert not notifier.configured
    (message,) = not_delivered_logs(caplog)
    assert message.startswith("ALERT NOT DELIVERED (SLACK_WEBHOOK_URL is not set)")
    assert "Nightly backup failed" in message
    assert "SELECT count(*) FROM messages" in message


def test_empty_webhook_counts_as_unset(caplog: pytest.LogCaptureFixture) -> None:
    assert SlackNotifier("").send(backup_failed_alert()).delivered is False
    assert "SLACK_WEBHOOK_URL is not set" in not_delivered_logs(caplog)[0]


def test_refused_blocks_fall_back_to_text(slack_receiver: SlackReceiver) -> None:
    slack_receiver.respond_with([INVALID_BLOCKS])

    result = fast_notifier(slack_receiver.url).send(backup_failed_alert())

    assert result.delivered is True
    assert len(slack_receiver.requests) == 2
    fallback = slack_receiver.requests[1]
    assert set(fallback) == {"text"}
    assert "Nightly backup failed" in fallback["text"]
    assert RUN_URL in fallback["text"]


def test_repr_hides_the_webhook_url() -> None:
    notifier = SlackNotifier("https://hooks.slack.com/services/T/B/SECRET")
    assert "SECRET" not in repr(notifier)
