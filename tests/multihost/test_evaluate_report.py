"""Evaluation gathers the dropped examples and their reasons from every host (two processes)."""

import json
import subprocess
import sys
import textwrap

from tests.support.processes import free_port, multihost_env
from tests.support.runs import ROOT

GATHER = textwrap.dedent(
    """
    import json, sys
    from maskfeat_jax import distributed, evaluate
    process = int(sys.argv[2])
    distributed.initialize(sys.argv[1], 2, process, cpu_devices=1)
    local = {
        0: {10 + process: {"kind": "unreadable", "reason": f"host{process}.mp4: broken"}},
        1: {},
    }[process]
    print(json.dumps(evaluate._from_all_hosts(local), sort_keys=True))
    """
)


def test_dropped_reasons_are_gathered_from_every_host():
    address = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", GATHER, address, str(i)],
            cwd=ROOT,
            env=multihost_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    want = {"10": {"kind": "unreadable", "reason": "host0.mp4: broken"}}
    assert outs[0] == outs[1] == want
