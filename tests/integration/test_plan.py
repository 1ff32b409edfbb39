"""The planner's command line: a report, and an unknown topology refused."""

import subprocess
import sys

import pytest

from tests.support.runs import ROOT, child_env

pytest.importorskip("libtpu", reason="planning needs libtpu (requirements-plan.txt)")


def test_command_line_reports_and_refuses_unknown_topologies(tmp_path):
    bad = subprocess.run(
        [sys.executable, "-m", "maskfeat_jax.plan", "--config", "configs/demo.py",
         "--topology", "v9:2x2"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "unknown topology" in bad.stderr
