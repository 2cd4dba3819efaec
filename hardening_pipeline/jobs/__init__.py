"""One function per job: it does the work, writes the report and sends the alert.

One module per job: ``backup``, ``retention``, ``drill``, ``status``, ``canaries``, ``seal`` and
``evidence`` (which runs the others in order); ``wiring`` builds their keyring, store and Slack
notifier from the settings.

``cli.py`` and ``defs/`` call these and only present the result (tables, metadata, exit codes),
so a job behaves the same from the command line, the Dagster UI and the evidence run. Each
result says whether it ``passed`` and, when red, gives one ``failure`` sentence naming the
problem and the fix. No Dagster import anywhere in this package.
"""

from typing import Protocol


class JobResult(Protocol):
    """What every job result offers its presenters."""

    @property
    def passed(self) -> bool: ...

    @property
    def subject(self) -> str: ...

    @property
    def failure(self) -> str | None: ...
