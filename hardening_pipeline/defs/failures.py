"""Run failures that read as one sentence in the Dagster UI and in Slack.

Dagster shows a failed step's error as Python's ``format_exception_only``, which starts with the
exception's dotted class path (``dagster._core.definitions.events.Failure: ...``) and is followed
by every chained cause. The operator needs neither: the sentence already names the problem and
the fix. Python leaves the module out for classes in ``builtins`` and prints the class's
``__qualname__`` verbatim, so a ``Failure`` subclass whose qualname is the subject ("nightly
backup failed") makes the first line read ``nightly backup failed: <problem and fix>``.

Below the sentence the UI still prints the step's stack, Dagster's own frames included: Dagster
records every ``Failure`` with the whole stack from its step executor down to the raise and
marks it a framework error, and its UI hides a stack only for wrapped user-code errors, whose
first line is Dagster's, not ours. Nothing public trims it
(``test_defs_failure_messages.py::test_under_the_sentence_dagster_still_records_its_own_frames_down_to_the_raising_line``
names the lines).
"""

from collections.abc import Mapping
from typing import Any

import dagster as dg

from hardening_pipeline.alerts.runbook import runbook_link
from hardening_pipeline.errors import CheckFailed, ConfigError, HardeningError
from hardening_pipeline.settings import load_settings

FAILURE_CLASS_NAME = "HardeningFailure"
# A run whose job delivered its own Slack alert for this failure carries this tag, so the
# failure sensor does not send a second message about the same thing.
ALERTED_BY_JOB_TAG = "hardening/alerted"


def mark_alerted(instance: dg.DagsterInstance, run_id: str) -> None:
    """Tag the run as alerted by its own job (see ``ALERTED_BY_JOB_TAG``)."""
    instance.add_run_tags(run_id, {ALERTED_BY_JOB_TAG: "true"})


def runbook_metadata(anchor: str, runbook_base_url: str | None) -> dg.MetadataValue:
    """A clickable link where the runbook is published (HARDENING_RUNBOOK_URL); otherwise the
    section's path as text, since a relative link in the UI opens a Dagster page, not the file."""
    if runbook_base_url:
        return dg.MetadataValue.url(runbook_link(anchor, runbook_base_url))
    return dg.MetadataValue.text(runbook_link(anchor))


def _published_runbook() -> str | None:
    try:
        return load_settings().runbook_url
    except HardeningError:  # the failure being reported may be that very configuration
        return None


def failure(
    subject: str,
    sentence: str,
    *,
    metadata: Mapping[str, Any] | None = None,
    allow_retries: bool = False,
    runbook_anchor: str | None = None,
) -> dg.Failure:
    """A ``dg.Failure`` whose message in the UI is ``<subject>: <sentence>``.

    Raise it ``from None``: the cause was already turned into the sentence, and its chained
    traceback (botocore, psycopg, Dagster frames) would bury it. ``runbook_anchor`` adds the
    runbook section as a ``runbook`` entry under the error.
    """
    if runbook_anchor is not None:
        link = runbook_metadata(runbook_anchor, _published_runbook())
        metadata = {**(metadata or {}), "runbook": link}
    cls = type(
        FAILURE_CLASS_NAME,
        (dg.Failure,),
        {"__module__": "builtins", "__qualname__": subject},
    )
    raised = cls(description=sentence, metadata=metadata, allow_retries=allow_retries)
    # The description (shown with the failure's metadata, and used by the failure alert)
    # carries the subject too; the exception's own text stays the bare sentence.
    raised.description = f"{subject}: {sentence}"
    return raised


def job_failure(exc: HardeningError, what: str, runbook_anchor: str | None = None) -> dg.Failure:
    """``<what> failed: <the error's sentence>``; retried only for errors a second try could fix
    (a store or network error), never for bad configuration or a red check."""
    return failure(
        f"{what} failed",
        str(exc),
        allow_retries=not isinstance(exc, ConfigError | CheckFailed),
        runbook_anchor=runbook_anchor,
    )


def first_line(error: object) -> str:
    """The first line of a recorded error (a ``SerializableErrorInfo``), as the UI shows it."""
    return ((getattr(error, "message", "") or "").strip().splitlines() or [""])[0]
