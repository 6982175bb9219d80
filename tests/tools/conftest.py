"""Under `make test-tools` (KILN_TOOLS_NO_SKIP=1), a skipped test fails: the target installs everything the tool tests
need (restic, mariadb, qemu, lynis), so a skip there means a missing host package, and a test that never ran in CI
would otherwise pass unseen (21 backup tests did, before restic was in the target's list)."""

from __future__ import annotations

import os

import pytest

NO_SKIP = os.environ.get("KILN_TOOLS_NO_SKIP") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if NO_SKIP and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under make test-tools (KILN_TOOLS_NO_SKIP=1): {reason}"
