"""The Cloud TPU launcher prints exactly the gcloud commands a run needs, and its remote scripts
work: they are run here with bash against a fake home, venv and uv (no cloud account needed).
"""

import json
import os
import shlex
import site
import subprocess
import sys
import tarfile
import time

import pytest

from launch import commands
from tests.support.runs import ROOT

LOC = ["--zone", "europe-west4-b", "--project", "my-proj"]


def launch(*args, env=None, check=True):
    """``python -m launch.tpu ARGS`` with no MASKFEAT_* settings but those in ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MASKFEAT_")}
    clean.update(env or {})
    clean["PYTHONPATH"] = ROOT
    result = subprocess.run(
        [sys.executable, "-m", "launch.tpu", *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def gcloud_commands(stdout):
    """The printed commands as argument lists; each line must survive a shell round trip."""
    out = []
    for line in stdout.splitlines():
        if line and not line.startswith("#"):
            argv = shlex.split(line)
            assert shlex.join(argv) == line
            out.append(argv)
    return out


def remote_script(argv):
    """The bash script an ``ssh --command`` runs."""
    assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
    bash, flag, script = shlex.split(argv[argv.index("--command") + 1])
    assert (bash, flag) == ("bash", "-c")
    return script


def ssh(node, script, worker="all"):
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", node, *LOC, f"--worker={worker}",
            "--command", shlex.join(["bash", "-c", script])]  # fmt: skip


@pytest.mark.parametrize(
    "topology,accelerator_type,chips,hosts,runtime",
    [
        ("v5e:16x16", "v5litepod-256", 256, 32, "v2-alpha-tpuv5-lite"),
        ("v5e:2x4", "v5litepod-8", 8, 1, "v2-alpha-tpuv5-lite"),
        ("v6e:16x16", "v6e-256", 256, 32, "v2-alpha-tpuv6e"),
        ("v4:4x4x4", "v4-128", 64, 16, "tpu-ubuntu2204-base"),
        ("v4:4x4x8", "v4-256", 128, 32, "tpu-ubuntu2204-base"),
        ("v5p:4x4x4", "v5p-128", 64, 16, "v2-alpha-tpuv5"),
        ("v5p:16x16x24", "v5p-12288", 6144, 1536, "v2-alpha-tpuv5"),
        ("v5litepod-256", "v5litepod-256", 256, 32, "v2-alpha-tpuv5-lite"),
        ("v5p-128", "v5p-128", 64, 16, "v2-alpha-tpuv5"),
    ],
)
def test_planner_topologies_map_to_accelerator_types(
    topology, accelerator_type, chips, hosts, runtime
):
    tpu = commands.tpu_slice(topology)
    assert (tpu.accelerator_type, tpu.chips, tpu.hosts) == (accelerator_type, chips, hosts)
    assert tpu.runtime_version == runtime
    assert commands.tpu_slice(topology, "my-runtime").runtime_version == "my-runtime"


def test_create_single_v5e_slice_on_spot_from_environment():
    env = {
        "MASKFEAT_TPU_NAME": "mf-v5e",
        "MASKFEAT_ZONE": "europe-west4-b",
        "MASKFEAT_PROJECT": "my-proj",
        "MASKFEAT_TOPOLOGY": "v5e:16x16",
        "MASKFEAT_PROVISIONING": "spot",
    }
    result = launch("create", "--dry_run", env=env)
    assert gcloud_commands(result.stdout) == [
        ["gcloud", "compute", "tpus", "queued-resources", "create", "mf-v5e", *LOC,
         "--accelerator-type", "v5litepod-256", "--runtime-version", "v2-alpha-tpuv5-lite",
         "--node-id", "mf-v5e", "--spot"],
        ["gcloud", "compute", "tpus", "queued-resources", "describe", "mf-v5e", *LOC,
         "--format=value(state.state)"],
    ]  # fmt: skip
    assert "256 chips on 32 host(s)" in result.stdout


def test_create_v4_reserved_and_best_effort():
    base = ["create", "--name=mf-v4", "--zone=europe-west4-b", "--project=my-proj",
            "--topology=v4:4x4x8", "--nowait", "--dry_run"]  # fmt: skip
    (reserved,) = gcloud_commands(launch(*base, "--provisioning=reserved").stdout)
    assert reserved == [
        "gcloud", "compute", "tpus", "queued-resources", "create", "mf-v4", *LOC,
        "--accelerator-type", "v4-256", "--runtime-version", "tpu-ubuntu2204-base",
        "--node-id", "mf-v4", "--reserved",
    ]  # fmt: skip
    # --best-effort is only in gcloud's alpha surface; on-demand adds no flag.
    (best_effort,) = gcloud_commands(launch(*base, "--provisioning=best-effort").stdout)
    assert best_effort[:3] == ["gcloud", "alpha", "compute"] and best_effort[-1] == "--best-effort"
    (on_demand,) = gcloud_commands(launch(*base).stdout)
    assert on_demand == reserved[:-1]


def test_two_v5p_slices_every_action_reaches_every_node():
    common = ["--name=mf", "--zone=europe-west4-b", "--project=my-proj", "--num_slices=2"]
    create = gcloud_commands(launch("create", *common, "--topology=v5p:4x4x4", "--dry_run").stdout)
    assert create[0] == [
        "gcloud", "compute", "tpus", "queued-resources", "create", "mf", *LOC,
        "--accelerator-type", "v5p-128", "--runtime-version", "v2-alpha-tpuv5",
        "--node-count", "2", "--node-prefix", "mf",
    ]  # fmt: skip
    setup = gcloud_commands(launch("setup", *common, "--dry_run").stdout)
    bundle = setup[0][5]
    assert bundle.endswith(commands.BUNDLE_NAME)
    assert [c[:8] for c in setup[:2]] == [
        ["gcloud", "compute", "tpus", "tpu-vm", "scp", bundle, f"{node}:{commands.BUNDLE_NAME}",
         "--zone"] for node in ("mf-0", "mf-1")
    ]  # fmt: skip
    assert all(c[-1] == "--worker=all" for c in setup[:2])
    assert [c[5] for c in setup[2:]] == ["mf-0", "mf-1"]
    assert remote_script(setup[2]) == remote_script(setup[3])
    run = launch("run", *common, "--bucket=bkt", "--dry_run")
    assert [c[5] for c in gcloud_commands(run.stdout)] == ["mf-0", "mf-1"]
    assert "multi-slice needs a hybrid device mesh" in run.stderr
    stop = gcloud_commands(launch("stop", *common, "--dry_run").stdout)
    assert [(c[5], c[-3]) for c in stop] == [("mf-0", "--worker=all"), ("mf-1", "--worker=all")]
    (logs,) = gcloud_commands(launch("logs", *common, "--log_slice=1", "--dry_run").stdout)
    assert logs[5] == "mf-1" and "--worker=0" in logs
    assert remote_script(logs) == 'tail -n 100 -F "$HOME"/maskfeat-train.log'


def test_setup_ships_the_tree_and_pins_jax_tpu_to_the_requirements():
    pin = next(line for line in open(os.path.join(ROOT, "requirements.txt")) if line[:5] == "jax==")
    assert commands.jax_tpu_requirement() == f"jax[tpu]=={pin[5:].strip()}" == "jax[tpu]==0.10.2"
    copy = gcloud_commands(launch("setup", "--name=mf", *LOC, "--dry_run").stdout)
    assert [c[4] for c in copy] == ["scp", "ssh"]
    script = remote_script(copy[1])
    assert copy[1] == ssh("mf", script)
    assert "uv venv --python 3.11" in script
    assert '-r requirements.txt "jax[tpu]==0.10.2" "gcsfs==' in script
    clone = gcloud_commands(
        launch("setup", "--name=mf", *LOC, "--repo_url=https://example.com/m.git",
               "--repo_ref=v1", "--dry_run").stdout
    )  # fmt: skip
    assert [c[4] for c in clone] == ["ssh"]
    assert "git clone --quiet https://example.com/m.git" in remote_script(clone[0])


def test_run_stop_and_delete_commands():
    args = ["--name=mf", *LOC, "--dry_run"]
    (run,) = gcloud_commands(launch("run", *args, "--bucket=gs://bkt/").stdout)
    script = remote_script(run)
    assert run == ssh("mf", script)
    assert (
        '"$HOME"/maskfeat-venv/bin/python -m maskfeat_jax.main '
        "--config=configs/in1k_vit_l_pretrain.py --workdir=gs://bkt/maskfeat/in1k_vit_l_pretrain "
        "--config.input.data_dir=gs://bkt/tensorflow_datasets > "
    ) in script
    (stop,) = gcloud_commands(launch("stop", *args, "--stop_grace_seconds=30").stdout)
    assert stop == ssh("mf", remote_script(stop))
    assert 'kill -TERM -- "$T"' in remote_script(stop) and "seq 1 30" in remote_script(stop)
    (delete,) = gcloud_commands(launch("delete", *args).stdout)
    assert delete == ["gcloud", "compute", "tpus", "queued-resources", "delete", "mf", *LOC,
                      "--force", "--async", "--quiet"]  # fmt: skip


@pytest.mark.parametrize(
    "args,message",
    [
        (["create", "--topology=v5e:3x5"], "v5e has no slice of shape 3x5"),
        (["create", "--topology=tpu9:2x2"], "unknown topology 'tpu9:2x2'"),
        (["create", "--topology=v4-3"], "count TensorCores, 2 per chip"),
        (["create"], "no topology"),
        (["create", "--topology=v5e:16x16", "--num_slices=0"], "--num_slices must be at least 1"),
        (["create", "--topology=v5e:4x4", "--provisioning=cheap"], "--provisioning must be"),
        (["run"], "no bucket"),
        (["run", "--workdir=/tmp/run"], "--workdir '/tmp/run' is not on GCS"),
        (["run", "--bucket=b", "--data_dir=/data"], "--data_dir '/data' is not on GCS"),
        (["run", "--bucket=b", "--", "--batch_size=8"], "only config overrides"),
        (["run", "--bucket=b", "--env=NOVALUE"], "expected KEY=VALUE"),
        (["setup", "--remote_dir=.."], "must name a directory below the home"),
        (["logs", "--log_worker=first"], "worker index or 'all'"),
        (["stop", "--name=Bad_Name"], "lowercase letters"),
        (["launch"], "unknown action 'launch'"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(args, message):
    env = {"MASKFEAT_TPU_NAME": "mf", "MASKFEAT_ZONE": "europe-west4-b"}
    result = launch("--dry_run", *args, env=env, check=False)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not gcloud_commands(result.stdout)


def test_missing_zone_and_name_are_reported():
    result = launch("delete", "--name=mf", "--dry_run", check=False)
    assert result.returncode != 0 and "no zone" in result.stderr
    result = launch("delete", "--zone=z", "--dry_run", check=False)
    assert result.returncode != 0 and "MASKFEAT_TPU_NAME" in result.stderr


# -------------------------------------------------------------------------------------------
# The remote scripts, run with bash here: a home with spaces, a fake venv python and fake uv.


def write_executable(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def bash(script, home, **env):
    full = {**os.environ, "HOME": str(home), **env}
    return subprocess.run(["bash", "-c", script], env=full, capture_output=True, text=True)


def fake_uv() -> str:
    """A stand-in for uv whose ``venv`` makes a real venv of this interpreter that sees this
    test's packages wherever they are installed (system Python or a virtual environment)."""
    base = os.path.dirname(os.path.realpath(sys.executable))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    packages = " ".join(shlex.quote(p) for p in site.getsitepackages())
    return (
        '#!/bin/sh\necho "$@" >> "$UV_LOG"\n'
        'if [ "$1" = venv ]; then\n'
        f'  mkdir -p "$4/bin" "$4/lib/{version}/site-packages"\n'
        f'  ln -s {shlex.quote(sys.executable)} "$4/bin/python"\n'
        f'  printf "home = %s\\n" {shlex.quote(base)} > "$4/pyvenv.cfg"\n'
        f'  printf "%s\\n" {packages} > "$4/lib/{version}/site-packages/outer.pth"\n'
        "fi\n"
    )


def test_setup_script_unpacks_the_bundle_and_builds_the_venv(tmp_path):
    home, tools = tmp_path / "home dir", tmp_path / "tools"
    uv_log = tmp_path / "uv.log"
    write_executable(tools / "uv", fake_uv())
    (home / "src").mkdir(parents=True)
    (home / "src" / "requirements.txt").write_text("jax==0.10.2\n")
    with tarfile.open(home / commands.BUNDLE_NAME, "w:gz") as tar:
        tar.add(home / "src" / "requirements.txt", arcname="requirements.txt")
    (dry,) = [c for c in gcloud_commands(
        launch("setup", "--name=mf", *LOC, "--remote_dir=code dir", "--dry_run").stdout
    ) if c[4] == "ssh"]  # fmt: skip
    path = f"{tools}:{os.environ['PATH']}"
    for _ in range(2):  # the second run keeps the venv that has the right Python
        result = bash(remote_script(dry), home, PATH=path, UV_LOG=str(uv_log))
        assert result.returncode == 0, result.stderr
        python, version, jax_version = result.stdout.strip().rsplit(" ", 2)
        assert python.endswith("maskfeat-venv/bin/python") and version.startswith("3.11.")
        assert jax_version == "0.10.2"
        assert (home / "code dir" / "requirements.txt").is_file()
        assert not (home / commands.BUNDLE_NAME).exists()
        with tarfile.open(home / commands.BUNDLE_NAME, "w:gz") as tar:
            tar.add(home / "src" / "requirements.txt", arcname="requirements.txt")
    venv_python = f"{home}/maskfeat-venv/bin/python"
    pins = f"jax[tpu]==0.10.2 {commands.GCS_REQUIREMENT}"
    assert uv_log.read_text().splitlines() == [
        f"venv --python 3.11 {home}/maskfeat-venv",
        f"pip install --python {venv_python} -r requirements.txt {pins}",
        f"pip install --python {venv_python} -r requirements.txt {pins}",
    ]


def test_setup_script_clones_a_ref(tmp_path):
    repo = tmp_path / "repo"
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "requirements.txt").write_text("jax==0.10.2\n")
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "one"], check=True)
    subprocess.run(git + ["tag", "v1"], check=True)
    (repo / "requirements.txt").write_text("jax==0.10.2\n# later\n")
    subprocess.run(git + ["commit", "-qam", "two"], check=True)
    script = commands.setup_script(commands.RemoteLayout(), "jax[tpu]==0.10.2", str(repo), "v1")
    # Only the checkout part: the venv steps start where uv is looked for.
    checkout = script.split("; export PATH=")[0]
    (tmp_path / "home").mkdir()
    result = bash(checkout, tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "home" / "maskfeat-jax" / "requirements.txt").read_text() == "jax==0.10.2\n"


def test_run_script_passes_arguments_exactly_and_stop_ends_the_process(tmp_path):
    home = tmp_path / "home dir"
    (home / "code dir").mkdir(parents=True)
    seen = tmp_path / "seen.json"
    write_executable(
        home / "maskfeat-venv" / "bin" / "python",
        f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "
        + shlex.quote(
            "import json, os, sys, time; json.dump({'argv': sys.argv[1:], 'env': "
            "os.environ.get('LIBTPU_INIT_ARGS'), 'pgid': os.getpgid(0), 'pid': os.getpid()}, "
            "open(os.environ['SEEN'], 'w')); time.sleep(120)"
        )
        + ' "$@"\n',
    )
    overrides = ["--config.input.batch_size=4096", "--config.resume=gs://bkt/old run's"]
    (run,) = gcloud_commands(
        launch("run", "--name=mf", *LOC, "--remote_dir=code dir", "--workdir=gs://bkt/vit l",
               "--data_dir=gs://bkt/tfds", "--config=configs/in1k_vit_l_pretrain.py:300ep",
               "--env=LIBTPU_INIT_ARGS=--xla_flag=1 --other", "--dry_run", "--", *overrides).stdout
    )  # fmt: skip
    started = bash(remote_script(run), home, SEEN=str(seen))
    assert started.returncode == 0, started.stderr
    assert f"log {home}/maskfeat-train.log" in started.stdout
    deadline = time.monotonic() + 30
    while not seen.exists() or not seen.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.1)
    got = json.loads(seen.read_text())
    assert got["argv"] == [
        "-m", "maskfeat_jax.main", "--config=configs/in1k_vit_l_pretrain.py:300ep",
        "--workdir=gs://bkt/vit l", "--config.input.data_dir=gs://bkt/tfds", *overrides,
    ]  # fmt: skip
    assert got["env"] == "--xla_flag=1 --other"
    # Detached into its own process group, with its pid where stop looks for it.
    assert got["pgid"] == got["pid"] == int((home / "maskfeat-train.pid").read_text())
    again = bash(remote_script(run), home, SEEN=str(seen))
    assert again.returncode == 1 and "already runs" in again.stderr
    (stop,) = gcloud_commands(launch("stop", "--name=mf", *LOC, "--dry_run").stdout)
    stopped = bash(remote_script(stop), home)
    assert stopped.returncode == 0 and stopped.stdout.startswith("stopped on "), stopped
    stat = f"/proc/{got['pid']}/stat"
    assert not os.path.exists(stat) or open(stat).read().split(") ")[1][0] == "Z"
    assert not (home / "maskfeat-train.pid").exists()
    assert bash(remote_script(stop), home).stdout.startswith("no training started")


def test_real_runs_execute_the_printed_commands(tmp_path):
    """With a stand-in gcloud on PATH: create polls until ACTIVE, setup ships a bundle of the
    tree without runs/ or caches, and the commands run are the ones a dry run prints."""
    calls = tmp_path / "calls.jsonl"
    write_executable(
        tmp_path / "bin" / "gcloud",
        f"#!{sys.executable}\nimport json, os, shutil, sys\n"
        "args = sys.argv[1:]\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(['gcloud', *args]) + '\\n')\n"
        "if 'describe' in args: print('ACTIVE')\n"
        f"if 'scp' in args: shutil.copy(args[4], {str(tmp_path / 'shipped.tar.gz')!r})\n",
    )
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "TMPDIR": str(tmp_path),
           "MASKFEAT_TPU_NAME": "mf", "MASKFEAT_ZONE": "europe-west4-b",
           "MASKFEAT_PROJECT": "my-proj"}  # fmt: skip
    for action in (["create", "--topology=v6e:16x16", "--poll_seconds=1"], ["setup"]):
        real = launch(*action, env=env)
        printed = gcloud_commands(launch(*action, "--dry_run", env=env).stdout)
        ran = [json.loads(line) for line in calls.read_text().splitlines()]
        calls.unlink()
        assert ran == printed
        assert shlex.join(printed[0]) in real.stderr
    with tarfile.open(tmp_path / "shipped.tar.gz") as tar:
        names = set(tar.getnames())
    assert {
        "requirements.txt",
        "maskfeat_jax/main.py",
        "launch/tpu.py",
        "maskfeat_jax/defaults.py",
    } <= (names)
    assert not any(n.startswith(("runs/", ".git/")) or "__pycache__" in n for n in names)
