"""Helpers that run the training entry point in a child process, as a user would."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Every test process compiles with LLVM's optimisations off: the same XLA programs and the same
# numbers, compiled two to three times faster and run somewhat slower. The suite compiles many
# small programs and runs each for a few steps, so compiling is most of its time. Speed is
# measured by benchmarks/, which run with the user's default flags.
TEST_COMPILE_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(flags: str = "") -> str:
    """``flags`` (a process's own XLA_FLAGS: "" for one CPU device) plus the tests' compile
    flags."""
    return " ".join(f for f in (flags, TEST_COMPILE_FLAGS) if f)


def main_command(workdir, *overrides, config="configs/demo.py:smoke"):
    return [
        sys.executable,
        "-m",
        "maskfeat_jax.main",
        "--config",
        config,
        "--workdir",
        str(workdir),
        *overrides,
    ]


def child_env(**env):
    """This process's environment for a child; an ``XLA_FLAGS`` given keeps the compile flags."""
    if "XLA_FLAGS" in env:
        env["XLA_FLAGS"] = xla_flags(env["XLA_FLAGS"])
    return dict(os.environ, PYTHONPATH=ROOT, **env)


def run_main(workdir, *overrides, config="configs/demo.py:smoke", **env):
    return subprocess.run(
        main_command(workdir, *overrides, config=config),
        cwd=ROOT,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=600,
    )


def start_main(workdir, *overrides, config="configs/demo.py:smoke", log=None, **env):
    """The entry point in the background; stderr goes to ``log`` (a path) if given."""
    return subprocess.Popen(
        main_command(workdir, *overrides, config=config),
        cwd=ROOT,
        env=child_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w") if log else subprocess.DEVNULL,
    )


def metric_lines(workdir):
    path = os.path.join(str(workdir), "metrics.jsonl")
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:  # being written
                pass
    return out
