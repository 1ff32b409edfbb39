r"""Run MaskFeat pretraining on Cloud TPU VMs: create, setup, run, logs, stop, delete, status.

    python -m launch.tpu ACTION [--flags] [-- --config.key=value ...]

    create  request the slice(s) as a queued resource and wait until it is ACTIVE
    setup   on every worker: copy the working tree (or clone --repo_url), build the venv
    run     start training on every worker at once; config overrides go after '--'
    logs    stream a worker's training log
    stop    stop training on every worker (SIGTERM: the trainer checkpoints, then exits)
    delete  delete the queued resource and its TPU VMs
    status  describe the queued resource

Every flag falls back to an environment variable (MASKFEAT_TPU_NAME, MASKFEAT_ZONE,
MASKFEAT_PROJECT, MASKFEAT_BUCKET, ...; see each flag's help), so a shell can export the job's
settings once. ``--dry_run`` prints every gcloud command, shell-quoted, one per line (notes
start with '#') and runs nothing. Otherwise each command is echoed to stderr and run with
``check=True``; commands for several slices run at the same time. The commands themselves are
built in ``launch/commands.py``; see launch/README.md for a walk-through.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time

from absl import app, flags

from launch import commands
from launch.commands import LaunchError

FLAGS = flags.FLAGS
ACTIONS = ("create", "setup", "run", "logs", "stop", "delete", "status")
# Directories never shipped to the workers when the tree is not a git checkout.
_NOT_SHIPPED = {".git", ".venv", "runs", "__pycache__", ".ruff_cache", ".pytest_cache"}


def _define_flags() -> None:
    """Defined only when run as a program, so importing this module adds no global flags."""
    s, i, b = flags.DEFINE_string, flags.DEFINE_integer, flags.DEFINE_boolean
    s(
        "name",
        None,
        "TPU name; the node id, or the node prefix for several slices. Env: MASKFEAT_TPU_NAME.",
    )
    s("zone", None, "Zone, e.g. europe-west4-b. Env: MASKFEAT_ZONE.")
    s("project", None, "Project (default: gcloud's). Env: MASKFEAT_PROJECT.")
    s(
        "queued_resource",
        None,
        "Queued resource id (default: the TPU name). Env: MASKFEAT_QUEUED_RESOURCE.",
    )
    s(
        "topology",
        None,
        "Slice shape as the planner writes it (v5e:16x16, v6e:16x16, v4:4x4x8, "
        "v5p:4x4x4) or an accelerator type (v5litepod-256). Env: MASKFEAT_TOPOLOGY.",
    )
    s(
        "runtime_version",
        None,
        "TPU software version (default: the one for the generation). "
        "Env: MASKFEAT_RUNTIME_VERSION.",
    )
    i("num_slices", None, "Slices (multi-slice when > 1). Env: MASKFEAT_NUM_SLICES; default 1.")
    s(
        "provisioning",
        None,
        f"One of {', '.join(commands.PROVISIONING)}. "
        "Env: MASKFEAT_PROVISIONING; default on-demand.",
    )
    b("wait", True, "create: poll until the queued resource is ACTIVE.")
    i("poll_seconds", 60, "create: seconds between state polls.")
    i("wait_minutes", 0, "create: give up waiting after this long (0: wait as long as it takes).")
    s(
        "local_dir",
        str(commands.REPO_ROOT),
        "setup: the tree to copy (tracked and untracked files that git does not ignore).",
    )
    s(
        "repo_url",
        None,
        "setup: clone this repository instead of copying the local tree. Env: MASKFEAT_REPO_URL.",
    )
    s(
        "repo_ref",
        None,
        "setup: branch, tag or commit to check out. Env: MASKFEAT_REPO_REF; default main.",
    )
    s(
        "remote_dir",
        None,
        "Code directory on the workers, below the home unless absolute. "
        "Env: MASKFEAT_REMOTE_DIR; default maskfeat-jax.",
    )
    s("venv", None, "Venv on the workers. Env: MASKFEAT_VENV; default maskfeat-venv.")
    s(
        "config",
        None,
        "run: config file (relative to the code), optionally with :variant. "
        f"Env: MASKFEAT_CONFIG; default {commands.DEFAULT_CONFIG}.",
    )
    s(
        "bucket",
        None,
        "run: GCS bucket for the workdir (gs://BUCKET/maskfeat/RUN) and data "
        "(gs://BUCKET/tensorflow_datasets). Env: MASKFEAT_BUCKET.",
    )
    s("workdir", None, "run: gs:// workdir (overrides the bucket's). Env: MASKFEAT_WORKDIR.")
    s(
        "data_dir",
        None,
        "run: gs:// tfds data_dir (overrides the bucket's). Env: MASKFEAT_DATA_DIR.",
    )
    s(
        "run_name",
        None,
        "run: name of the workdir below gs://BUCKET/maskfeat/ (default: the "
        "config file's name). Env: MASKFEAT_RUN_NAME.",
    )
    flags.DEFINE_multi_string("env", [], "run: KEY=VALUE set for the trainer (repeatable).")
    b("foreground", False, "run: stream the output through ssh instead of detaching.")
    s("log_worker", "0", "logs: worker index, or 'all'.")
    i("log_slice", 0, "logs: which slice's node (multi-slice).")
    i("log_lines", 100, "logs: lines of history to show first.")
    b("follow", True, "logs: keep streaming (tail -F).")
    i("stop_grace_seconds", 180, "stop: seconds between SIGTERM and SIGKILL.")
    b("dry_run", False, "Print the gcloud commands instead of running them.")


def _setting(flag: str, env: str, default: str | None = None) -> str | None:
    value = getattr(FLAGS, flag)
    if value not in (None, ""):
        return value
    return os.environ.get(env) or default


def _int_setting(flag: str, env: str, default: int) -> int:
    value = getattr(FLAGS, flag)
    if value is not None:
        return value
    text = os.environ.get(env)
    try:
        return int(text) if text else default
    except ValueError:
        raise LaunchError(f"{env}={text!r} is not an integer.") from None


def _target() -> commands.Target:
    return commands.Target(
        name=_setting("name", "MASKFEAT_TPU_NAME") or "",
        zone=_setting("zone", "MASKFEAT_ZONE") or "",
        project=_setting("project", "MASKFEAT_PROJECT"),
        queued_resource=_setting("queued_resource", "MASKFEAT_QUEUED_RESOURCE"),
        num_slices=_int_setting("num_slices", "MASKFEAT_NUM_SLICES", 1),
    )


def _layout() -> commands.RemoteLayout:
    return commands.RemoteLayout(
        code_dir=_setting("remote_dir", "MASKFEAT_REMOTE_DIR", "maskfeat-jax"),
        venv=_setting("venv", "MASKFEAT_VENV", "maskfeat-venv"),
    )


class Runner:
    """Runs gcloud commands, or only prints them (dry run)."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run

    def note(self, text: str) -> None:
        if self.dry_run:
            print(f"# {text}")
        else:
            print(text, file=sys.stderr)

    def run(self, *cmds: list[str]) -> None:
        """Runs the commands at the same time (one per slice) and fails if any fails."""
        for cmd in cmds:
            print(
                shlex.join(cmd) if self.dry_run else f"+ {shlex.join(cmd)}",
                file=sys.stdout if self.dry_run else sys.stderr,
                flush=True,
            )
        if self.dry_run:
            return
        if len(cmds) == 1:
            subprocess.run(cmds[0], check=True)
            return
        processes = [subprocess.Popen(cmd) for cmd in cmds]
        codes = [p.wait() for p in processes]
        for cmd, code in zip(cmds, codes):
            if code:
                raise subprocess.CalledProcessError(code, cmd)

    def output(self, cmd: list[str]) -> str:
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


# ---------------------------------------------------------------------------------------------
# Actions.


def create(runner: Runner) -> None:
    target = _target()
    topology = _setting("topology", "MASKFEAT_TOPOLOGY")
    if not topology:
        raise LaunchError("no topology: set --topology or MASKFEAT_TOPOLOGY (e.g. v5e:16x16).")
    tpu = commands.tpu_slice(topology, _setting("runtime_version", "MASKFEAT_RUNTIME_VERSION"))
    provisioning = _setting("provisioning", "MASKFEAT_PROVISIONING", "on-demand")
    runner.note(
        f"{target.num_slices} x {tpu.accelerator_type}: {tpu.chips} chips on {tpu.hosts} "
        f"host(s) per slice, runtime {tpu.runtime_version}, {provisioning}"
    )
    runner.run(commands.create_command(target, tpu, provisioning))
    if FLAGS.wait:
        _wait_until_active(runner, target)


def _wait_until_active(runner: Runner, target: commands.Target) -> None:
    command = commands.state_command(target)
    if runner.dry_run:
        runner.note(f"then, every {FLAGS.poll_seconds} s until the state is ACTIVE:")
        runner.run(command)
        return
    deadline = time.monotonic() + 60 * FLAGS.wait_minutes if FLAGS.wait_minutes else None
    last = None
    while True:
        try:
            state = runner.output(command)
        except subprocess.CalledProcessError as e:  # a passing API error: ask again
            state = f"(describe failed: {e.stderr.strip() if e.stderr else e.returncode})"
        if state != last:
            print(
                f"{time.strftime('%H:%M:%S')} {target.qr}: {state or '(no state yet)'}",
                file=sys.stderr,
                flush=True,
            )
            last = state
        if state == "ACTIVE":
            return
        if state in commands.QUEUED_RESOURCE_FAILED:
            raise LaunchError(
                f"queued resource {target.qr} is {state}; see `python -m launch.tpu status`, "
                "then `delete` it and `create` again."
            )
        if deadline is not None and time.monotonic() > deadline:
            raise LaunchError(
                f"{target.qr} is still {state} after {FLAGS.wait_minutes} min; it stays in the "
                "queue (check with `status`, remove with `delete`)."
            )
        time.sleep(FLAGS.poll_seconds)


def bundle_files(root: str) -> list[str]:
    """The files of the tree that go to the workers: what git tracks or would track (so no
    runs/, venvs or caches), or everything outside those when ``root`` is not a checkout."""
    try:
        listing = subprocess.run(
            ["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            check=True,
            capture_output=True,
        ).stdout.decode()
        names = [n for n in listing.split("\0") if n and os.path.isfile(os.path.join(root, n))]
    except (OSError, subprocess.CalledProcessError):
        names = []
        for directory, subdirs, files in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if d not in _NOT_SHIPPED)
            rel = os.path.relpath(directory, root)
            names += [os.path.normpath(os.path.join(rel, f)) for f in sorted(files)]
    if "requirements.txt" not in names or "maskfeat_jax/main.py" not in names:
        raise LaunchError(f"{root} is not a maskfeat-jax tree (set --local_dir).")
    return sorted(names)


def setup(runner: Runner) -> None:
    target, layout = _target(), _layout()
    jax_requirement = commands.jax_tpu_requirement()
    repo_url = _setting("repo_url", "MASKFEAT_REPO_URL")
    if repo_url:
        repo_ref = _setting("repo_ref", "MASKFEAT_REPO_REF", "main")
        runner.note(f"workers clone {repo_url} at {repo_ref}")
        script = commands.setup_script(layout, jax_requirement, repo_url, repo_ref)
    else:
        root = os.path.abspath(FLAGS.local_dir)
        names = bundle_files(root)
        bundle = os.path.join(tempfile.gettempdir(), commands.BUNDLE_NAME)
        runner.note(f"pack {len(names)} files of {root} into {bundle}")
        if not runner.dry_run:
            with tarfile.open(bundle, "w:gz") as tar:
                for name in names:
                    tar.add(os.path.join(root, name), arcname=name, recursive=False)
        runner.run(
            *(commands.scp_command(target, n, bundle, commands.BUNDLE_NAME) for n in target.nodes)
        )
        if not runner.dry_run:
            os.remove(bundle)
        script = commands.setup_script(layout, jax_requirement)
    runner.run(*(commands.ssh_command(target, n, "all", script) for n in target.nodes))


def run(runner: Runner, overrides: list[str]) -> None:
    target, layout = _target(), _layout()
    config = _setting("config", "MASKFEAT_CONFIG", commands.DEFAULT_CONFIG)
    paths = commands.run_paths(
        config,
        bucket=_setting("bucket", "MASKFEAT_BUCKET"),
        workdir=_setting("workdir", "MASKFEAT_WORKDIR"),
        data_dir=_setting("data_dir", "MASKFEAT_DATA_DIR"),
        run_name=_setting("run_name", "MASKFEAT_RUN_NAME"),
    )
    args = commands.train_args(config, paths, commands.check_overrides(overrides))
    env = {"PYTHONUNBUFFERED": "1", **commands.parse_env(FLAGS.env)}
    if not os.path.isfile(os.path.join(FLAGS.local_dir, config.split(":")[0])):
        print(f"warning: {config} is not in {FLAGS.local_dir}", file=sys.stderr)
    if target.num_slices > 1:
        # jax.make_mesh (used by maskfeat_jax.sharding.make_mesh) refuses devices from more
        # than one slice; a hybrid ICI x DCN mesh is needed first (see launch/README.md).
        print(
            "warning: multi-slice needs a hybrid device mesh, which maskfeat_jax.sharding "
            "does not build yet; the run stops at mesh creation until it does.",
            file=sys.stderr,
        )
    runner.note(f"workdir {paths.workdir}; data_dir {paths.data_dir or '(config default)'}")
    script = commands.run_script(layout, args, env, foreground=FLAGS.foreground)
    runner.run(*(commands.ssh_command(target, n, "all", script) for n in target.nodes))


def logs(runner: Runner) -> None:
    target = _target()
    worker = FLAGS.log_worker
    if worker != "all" and not worker.isdigit():
        raise LaunchError(f"--log_worker must be a worker index or 'all', got {worker!r}.")
    if not 0 <= FLAGS.log_slice < target.num_slices:
        raise LaunchError(f"--log_slice must be in [0, {target.num_slices}).")
    script = commands.logs_script(_layout(), FLAGS.follow, FLAGS.log_lines)
    runner.run(commands.ssh_command(target, target.nodes[FLAGS.log_slice], worker, script))


def stop(runner: Runner) -> None:
    target = _target()
    script = commands.stop_script(_layout(), FLAGS.stop_grace_seconds)
    runner.run(*(commands.ssh_command(target, n, "all", script) for n in target.nodes))


def delete(runner: Runner) -> None:
    runner.run(commands.delete_command(_target()))


def status(runner: Runner) -> None:
    runner.run(commands.describe_command(_target()))


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in ACTIONS:
        given = f" {argv[1]!r}" if len(argv) > 1 else ""
        sys.exit(f"error: unknown action{given}; use one of {', '.join(ACTIONS)}.")
    action, rest = argv[1], argv[2:]
    runner = Runner(dry_run=FLAGS.dry_run)
    try:
        if action == "run":
            run(runner, rest)
        elif rest:
            raise LaunchError(f"{action} takes no arguments after the flags, got {rest}.")
        else:
            {
                "create": create,
                "setup": setup,
                "logs": logs,
                "stop": stop,
                "delete": delete,
                "status": status,
            }[action](runner)
    except LaunchError as e:
        sys.exit(f"error: {e}")
    except subprocess.CalledProcessError as e:
        sys.exit(f"error: exit status {e.returncode} from {shlex.join(e.cmd)}")
    except FileNotFoundError as e:
        if e.filename == "gcloud":
            sys.exit("error: gcloud not found; install the Google Cloud CLI (or use --dry_run).")
        raise
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
