"""Retention against hand-made timelines, checked against restic's documented rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardening_pipeline.backup.retention import (
    BackupRef,
    RetentionPlan,
    RetentionPolicy,
    plan_retention,
)

DEFAULT = RetentionPolicy()


def at(text: str) -> datetime:
    """An ISO timestamp; without an offset it means UTC."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def ref(text: str, backup_id: str | None = None) -> BackupRef:
    return BackupRef(backup_id or text, at(text))


def nightly(last: str, days: int, hour: int = 2) -> list[BackupRef]:
    """One backup a night at ``hour`` UTC, ``days`` nights ending on ``last`` (a date)."""
    end = datetime.fromisoformat(last).replace(hour=hour, tzinfo=UTC)
    return [
        BackupRef(f"b-{(end - timedelta(days=i)):%Y%m%d}", end - timedelta(days=i))
        for i in range(days)
    ]


def kept_days(plan: RetentionPlan) -> list[str]:
    return [k.created_at.astimezone(UTC).strftime("%Y-%m-%d") for k in plan.keep]


def reasons(plan: RetentionPlan) -> dict[str, list[str]]:
    return {k.backup_id: k.reasons for k in plan.keep}


# --- validation ---------------------------------------------------------------------------------


def test_policy_rejects_negative_and_non_integer_counts() -> None:
    with pytest.raises(ValueError, match="daily must be zero or more"):
        RetentionPolicy(daily=-1)
    with pytest.raises(ValueError, match="weekly must be an integer"):
        RetentionPolicy(weekly=1.5)  # type: ignore[arg-type]
    assert DEFAULT == RetentionPolicy(daily=30, weekly=12, monthly=12)
    assert DEFAULT.max_kept == 55


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        BackupRef("b1", datetime(2026, 11, 26, 2, 0))


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="'b1' appears more than once"):
        plan_retention([ref("2026-11-26T02:00", "b1"), ref("2026-11-25T02:00", "b1")], DEFAULT)


# --- small timelines ----------------------------------------------------------------------------


def test_empty_history_keeps_and_deletes_nothing() -> None:
    plan = plan_retention([], DEFAULT)
    assert plan.keep == [] and plan.delete == []


def test_one_backup_is_kept_for_every_reason() -> None:
    plan = plan_retention([ref("2026-11-26T02:00", "b1")], DEFAULT)
    assert reasons(plan) == {
        "b1": ["daily 2026-11-26", "weekly 2026-W48", "monthly 2026-11", "newest"]
    }
    assert plan.delete == []


def test_fewer_backups_than_slots_keeps_them_all() -> None:
    history = nightly("2026-11-26", 10)
    plan = plan_retention(history, DEFAULT)
    assert sorted(plan.kept_ids) == sorted(b.backup_id for b in history)
    assert plan.delete == []


def test_several_backups_a_day_keep_the_newest_of_each_day() -> None:
    history = [
        ref("2026-11-26T02:00", "nightly-26"),
        ref("2026-11-26T14:00", "manual-26"),
        ref("2026-11-25T02:00", "nightly-25"),
        ref("2026-11-25T09:30", "manual-25"),
        ref("2026-11-25T23:59:59", "late-25"),
    ]
    plan = plan_retention(history, RetentionPolicy(daily=2, weekly=0, monthly=0))
    assert plan.kept_ids == ["manual-26", "late-25"]
    assert plan.deleted_ids == ["nightly-26", "manual-25", "nightly-25"]
    # With a slot to spare when it reaches the oldest backup, the policy keeps that one too.
    roomy = plan_retention(history, RetentionPolicy(daily=3, weekly=0, monthly=0))
    assert roomy.kept_ids == ["manual-26", "late-25", "nightly-25"]
    assert reasons(roomy)["nightly-25"] == ["oldest"]


def test_input_order_does_not_matter_and_ties_break_by_id() -> None:
    history = [ref("2026-11-26T02:00", "b"), ref("2026-11-26T02:00", "a"), ref("2026-11-20T02:00")]
    plan = plan_retention(history, RetentionPolicy(daily=1, weekly=0, monthly=0))
    assert plan == plan_retention(list(reversed(history)), RetentionPolicy(1, 0, 0))
    # Same instant: the higher id sorts as newer, so "b" is the newest.
    assert plan.kept_ids == ["b"]
    assert plan.deleted_ids == ["a", "2026-11-20T02:00"]


def test_a_policy_that_keeps_nothing_deletes_nothing() -> None:
    # Like restic: an empty policy is a configuration mistake, not an order to wipe the store.
    history = nightly("2026-11-26", 5)
    plan = plan_retention(history, RetentionPolicy(daily=0, weekly=0, monthly=0))
    assert plan.delete == [] and len(plan.keep) == 5


def test_newest_is_kept_and_marked() -> None:
    plan = plan_retention(nightly("2026-11-26", 3), RetentionPolicy(daily=0, weekly=0, monthly=1))
    assert plan.kept_ids[0] == "b-20261126"
    assert "newest" in plan.keep[0].reasons


# --- long histories -----------------------------------------------------------------------------


def test_two_years_of_nightly_backups_keep_47() -> None:
    """restic's rules over 730 nights ending Thursday 2026-11-26 keep 47 backups.

    * daily: the 30 newest nights, 2026-10-28 .. 2026-11-26 (30);
    * weekly: the newest backup of the 12 newest ISO weeks, W37 .. W48. W44 .. W48 fall inside
      the daily range (their Sundays, and the newest night for W48), so 7 are new: the Sundays
      2026-09-13 .. 2026-10-25;
    * monthly: the last night of the 12 newest months, 2025-12 .. 2026-11. November's newest is
      the newest backup and 2026-10-31 is a daily, so 10 are new: 2025-12-31 .. 2026-09-30
      (2026-09-30 is a Wednesday, not a weekly's Sunday);
    * every policy used up its slots before reaching the oldest night, so the oldest goes.

    30 + 7 + 10 = 47, the count the research simulation gives; the oldest kept is 2025-12-31,
    eleven months back.
    """
    history = nightly("2026-11-26", 730)
    plan = plan_retention(history, DEFAULT)
    assert len(plan.keep) == 47
    assert len(plan.delete) == 730 - 47
    days = kept_days(plan)
    assert days[:30] == [
        f"{d:%Y-%m-%d}" for d in (at("2026-11-26") - timedelta(n) for n in range(30))
    ]
    assert days[30:37] == [
        "2026-10-25",
        "2026-10-18",
        "2026-10-11",
        "2026-10-04",
        "2026-09-30",
        "2026-09-27",
        "2026-09-20",
    ]
    assert days[37:] == [
        "2026-09-13",
        "2026-08-31",
        "2026-07-31",
        "2026-06-30",
        "2026-05-31",
        "2026-04-30",
        "2026-03-31",
        "2026-02-28",
        "2026-01-31",
        "2025-12-31",
    ]
    r = reasons(plan)
    assert r["b-20261126"] == ["daily 2026-11-26", "weekly 2026-W48", "monthly 2026-11", "newest"]
    assert r["b-20261031"] == ["daily 2026-10-31", "monthly 2026-10"]
    assert r["b-20260913"] == ["weekly 2026-W37"]
    assert r["b-20251231"] == ["monthly 2025-12"]
    assert not any("oldest" in x for x in r.values())


def test_forty_days_of_history_keep_32() -> None:
    """30 dailies, the W43 Sunday, and the oldest night (2026-10-18).

    The oldest is a new ISO week for the weekly policy (W42) and, as the monthly policy still
    has slots left when it reaches it, October's monthly keeps it a second time as "oldest".
    """
    plan = plan_retention(nightly("2026-11-26", 40), DEFAULT)
    assert len(plan.keep) == 32
    days = kept_days(plan)
    assert days[30:] == ["2026-10-25", "2026-10-18"]
    assert reasons(plan)["b-20261018"] == ["weekly 2026-W42", "oldest"]
    assert reasons(plan)["b-20261025"] == ["weekly 2026-W43"]


def test_missed_days_use_no_slots() -> None:
    # Backups every third night: the 30 daily slots reach back 90 days, not 30.
    history = [b for i, b in enumerate(nightly("2026-11-26", 120)) if i % 3 == 0]
    plan = plan_retention(history, RetentionPolicy(daily=30, weekly=0, monthly=0))
    assert len(plan.keep) == 30
    assert kept_days(plan)[-1] == "2026-08-31"  # 87 nights back


def test_an_outage_pushes_the_daily_window_back() -> None:
    # Five nights without a backup (2026-11-10 .. 2026-11-14): the dailies still keep 30
    # backups, reaching five nights further back than without the outage.
    outage = {f"b-202611{d}" for d in range(10, 15)}
    history = [b for b in nightly("2026-11-26", 60) if b.backup_id not in outage]
    plan = plan_retention(history, RetentionPolicy(daily=30, weekly=0, monthly=0))
    assert len(plan.keep) == 30
    assert kept_days(plan)[-1] == "2026-10-23"  # 34 nights back


def test_idempotent_replanning_deletes_nothing() -> None:
    history = nightly("2026-11-26", 730)
    first = plan_retention(history, DEFAULT)
    kept = [BackupRef(k.backup_id, k.created_at) for k in first.keep]
    second = plan_retention(kept, DEFAULT)
    assert second.delete == []
    assert second.kept_ids == first.kept_ids


def test_tomorrow_keeps_what_today_kept_minus_the_expired() -> None:
    # Retention runs nightly: one more backup must not delete more than one from each tier.
    history = nightly("2026-11-26", 400)
    today = plan_retention(history, DEFAULT)
    tomorrow_history = [BackupRef(k.backup_id, k.created_at) for k in today.keep]
    tomorrow_history.append(BackupRef("b-20261127", at("2026-11-27T02:00")))
    tomorrow = plan_retention(tomorrow_history, DEFAULT)
    assert tomorrow.kept_ids[0] == "b-20261127"
    assert tomorrow.deleted_ids == ["b-20261028"]  # the 31st night drops out of the dailies


# --- calendar edges -----------------------------------------------------------------------------


def test_iso_week_starts_on_monday() -> None:
    # Sunday 23:59 and Monday 00:00 are one minute apart but in different weeks.
    history = [
        ref("2026-11-23T00:00", "monday"),
        ref("2026-11-22T23:59", "sunday"),
        ref("2026-11-22T01:00", "sunday-early"),
    ]
    plan = plan_retention(history, RetentionPolicy(daily=0, weekly=2, monthly=0))
    assert reasons(plan) == {
        "monday": ["weekly 2026-W48", "newest"],
        "sunday": ["weekly 2026-W47"],
    }


def test_december_31_can_be_in_week_1_of_next_year() -> None:
    # 2026-12-31 is a Thursday: ISO week 2026-W53. 2024-12-31 (Tuesday) is in 2025-W01,
    # together with 2025-01-01, so one weekly slot covers both.
    plan = plan_retention(
        [
            ref("2025-01-01T02:00", "jan1"),
            ref("2024-12-31T02:00", "dec31"),
            ref("2024-12-29T02:00", "dec29"),
        ],
        RetentionPolicy(daily=0, weekly=3, monthly=0),
    )
    assert reasons(plan)["jan1"] == ["weekly 2025-W01", "newest"]
    assert "dec31" in plan.deleted_ids
    assert reasons(plan)["dec29"] == ["weekly 2024-W52"]
    assert plan_retention([ref("2026-12-31T02:00", "x")], DEFAULT).keep[0].reasons[1] == (
        "weekly 2026-W53"
    )


def test_month_and_year_ends() -> None:
    history = [
        ref("2027-01-01T00:00", "new-year"),
        ref("2026-12-31T23:59:59", "old-year"),
        ref("2026-12-01T00:00", "dec-first"),
        ref("2026-11-30T23:00", "nov-last"),
        ref("2026-02-28T02:00", "feb-last"),
    ]
    plan = plan_retention(history, RetentionPolicy(daily=0, weekly=0, monthly=4))
    assert reasons(plan) == {
        "new-year": ["monthly 2027-01", "newest"],
        "old-year": ["monthly 2026-12"],
        "nov-last": ["monthly 2026-11"],
        "feb-last": ["monthly 2026-02"],
    }
    assert plan.deleted_ids == ["dec-first"]


def test_periods_are_utc_whatever_the_offset() -> None:
    paris = timezone(timedelta(hours=1))
    # 00:30 in Paris on 1 March is 23:30 UTC on 28 February.
    early_march_paris = BackupRef("paris", datetime(2026, 3, 1, 0, 30, tzinfo=paris))
    later_feb = BackupRef("utc", at("2026-02-28T20:00"))
    plan = plan_retention(
        [early_march_paris, later_feb, ref("2026-03-02T02:00", "march")],
        RetentionPolicy(daily=2, weekly=0, monthly=2),
    )
    assert reasons(plan)["paris"] == ["daily 2026-02-28", "monthly 2026-02"]
    assert "utc" in plan.deleted_ids
    # The caller's offset is preserved in the plan; only bucketing uses UTC.
    assert plan.keep[1].created_at.utcoffset() == timedelta(hours=1)


# --- properties ---------------------------------------------------------------------------------

_moments = st.datetimes(
    min_value=datetime(2020, 1, 1),
    max_value=datetime(2030, 12, 31),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=9))]),
)


@settings(max_examples=150, deadline=None)
@given(
    moments=st.lists(_moments, max_size=150),
    daily=st.integers(0, 40),
    weekly=st.integers(0, 15),
    monthly=st.integers(0, 15),
)
def test_plan_partitions_the_input_and_respects_the_bounds(
    moments: list[datetime], daily: int, weekly: int, monthly: int
) -> None:
    history = [BackupRef(f"b{i}", m) for i, m in enumerate(moments)]
    policy = RetentionPolicy(daily, weekly, monthly)
    plan = plan_retention(history, policy)
    kept, deleted = set(plan.kept_ids), set(plan.deleted_ids)
    assert kept | deleted == {b.backup_id for b in history}
    assert not kept & deleted
    assert len(plan.kept_ids) == len(kept) and len(plan.deleted_ids) == len(deleted)
    if history:
        newest = max(history, key=lambda b: (b.created_at, b.backup_id))
        assert plan.kept_ids[0] == newest.backup_id
        if not policy.keeps_nothing:
            assert len(kept) <= policy.max_kept
        # Re-planning over what was kept deletes nothing more.
        again = plan_retention([b for b in history if b.backup_id in kept], policy)
        assert again.delete == []
    assert plan_retention(list(reversed(history)), policy) == plan


@settings(max_examples=60, deadline=None)
@given(moments=st.lists(_moments, min_size=1, max_size=120, unique=True))
def test_each_kept_daily_is_the_newest_of_its_day(moments: list[datetime]) -> None:
    history = [BackupRef(f"b{i}", m) for i, m in enumerate(moments)]
    plan = plan_retention(history, DEFAULT)
    by_day: dict[str, datetime] = {}
    for b in history:
        day = b.created_at.astimezone(UTC).strftime("%Y-%m-%d")
        by_day[day] = max(by_day.get(day, b.created_at), b.created_at)
    for k in plan.keep:
        for reason in k.reasons:
            if reason.startswith("daily "):
                assert by_day[reason.removeprefix("daily ")] == k.created_at
