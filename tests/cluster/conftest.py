"""The cluster test's steps run in order on one cluster: after a failed step the rest are skipped
(they would only report what the failure left behind); the fixture still tears the cluster down.
"""

from __future__ import annotations

import pytest


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> None:
    if (
        call.when == "call"
        and call.excinfo is not None
        and not call.excinfo.errisinstance(pytest.skip.Exception)
    ):
        item.session.cluster_failed = item.name  # type: ignore[attr-defined]


def pytest_runtest_setup(item: pytest.Item) -> None:
    failed = getattr(item.session, "cluster_failed", None)
    if failed:
        pytest.skip(f"an earlier step failed: {failed}")
