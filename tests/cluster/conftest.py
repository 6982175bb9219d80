"""The cluster test (issue 14): its harness beside this file (cluster.py), its figures at the end of the run."""

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import cluster  # beside this file (the path above)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for text in cluster.FIGURES:
        terminalreporter.write_line(f"kiln figure: {text}")
    terminalreporter.write_line(f"kiln figure: cluster test {time.monotonic() - cluster.T0:.0f}s in all")
