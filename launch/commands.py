"""The gcloud commands that create, set up, run and remove a MaskFeat job on Cloud TPU VMs.

Everything here builds argument lists and shell scripts and touches nothing, so the exact
commands can be checked without a cloud account. ``launch/tpu.py`` fills these from flags and
environment variables and runs them, or prints them with ``--dry_run``.

Accelerator types count TensorCores: two per chip on v4 and v5p, one per chip on v5e and v6e.
So the planner's ``v4:4x4x8`` (128 chips) is ``v4-256``, ``v5p:4x4x4`` (64 chips) is
``v5p-128``, and ``v5e:16x16`` and ``v6e:16x16`` (256 chips) are ``v5litepod-256`` and
``v6e-256``. Sources: cloud.google.com/tpu/docs/v5p ("v5p-32 specifies a v5p TPU slice with
32 TensorCores (16 chips)"; its shape table has 4x4x4 = 128 cores, 64 chips),
cloud.google.com/tpu/docs/v4 ("Each TPU v4 chip contains two TensorCores"),
cloud.google.com/tpu/docs/v5e (one TensorCore per chip; AcceleratorType
"v$VERSION_NUMBER-$CHIP_COUNT"; shapes 1x1 to 16x16, 8 chips per host) and
cloud.google.com/tpu/docs/v6e (one TensorCore per chip; shapes up to 16x16; 8 chips per host).

Runtime (software) versions for JAX, from cloud.google.com/tpu/docs/runtimes: v6e
``v2-alpha-tpuv6e``, v5p ``v2-alpha-tpuv5``, v5e ``v2-alpha-tpuv5-lite``, v4 and older
``tpu-ubuntu2204-base``.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
import shlex
from typing import Mapping, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = "configs/in1k_vit_l_pretrain.py"

# jax 0.10.2 declares Requires-Python >= 3.11 and the project is developed on 3.11, while the
# Ubuntu 22.04 TPU images ship Python 3.10: the remote venv gets its own 3.11 through uv.
PYTHON_VERSION = "3.11"
UV_INSTALLER = "https://astral.sh/uv/install.sh"
# gs:// paths go through etils.epath (Orbax's checkpoint directories, the tfds dataset info),
# which reads GCS with gcsfs when TensorFlow is absent, and requirements.txt has neither. The
# ArrayRecord shards themselves are read by array_record's own GCS reader.
GCS_REQUIREMENT = "gcsfs==2026.10.1"
# The code travels as one tarball of the working tree, unpacked on every worker.
BUNDLE_NAME = "maskfeat-jax-code.tar.gz"

PROVISIONING = ("on-demand", "spot", "reserved", "best-effort")
QUEUED_RESOURCE_FAILED = ("FAILED", "SUSPENDING", "SUSPENDED")


class LaunchError(ValueError):
    """Input the launcher cannot act on; the message says what to change."""


# ---------------------------------------------------------------------------------------------
# Topology -> accelerator type and runtime version.


@dataclasses.dataclass(frozen=True)
class Generation:
    type_prefix: str  # as in the accelerator type: v5litepod-256
    cores_per_chip: int  # accelerator types count TensorCores
    chips_per_host: int
    shapes: tuple[str, ...]  # slice shapes accepted in the planner's spelling
    runtime_version: str


_SHAPES_2D = ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16")
_SHAPES_3D = (
    "2x2x1",
    "2x2x2",
    "2x2x4",
    "2x4x4",
    "4x4x4",
    "4x4x8",
    "4x8x8",
    "8x8x8",
    "8x8x16",
    "8x16x16",
    "16x16x16",
)

GENERATIONS = {
    "v4": Generation("v4", 2, 4, _SHAPES_3D, "tpu-ubuntu2204-base"),
    "v5p": Generation("v5p", 2, 4, _SHAPES_3D + ("16x16x24",), "v2-alpha-tpuv5"),
    "v5e": Generation("v5litepod", 1, 8, _SHAPES_2D, "v2-alpha-tpuv5-lite"),
    "v6e": Generation("v6e", 1, 8, _SHAPES_2D, "v2-alpha-tpuv6e"),
}


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    generation: str
    accelerator_type: str
    chips: int
    hosts: int
    runtime_version: str


def tpu_slice(topology: str, runtime_version: str | None = None) -> TpuSlice:
    """The planner's ``v5e:16x16`` (or an accelerator type such as ``v5litepod-256``) as the
    slice to request."""
    text = topology.strip()
    planner = re.fullmatch(r"(v4|v5p|v5e|v6e):(\d+(?:x\d+){1,2})", text)
    accelerator = re.fullmatch(r"(v4|v5p|v5litepod|v6e)-(\d+)", text)
    if planner:
        name, shape = planner.groups()
        generation = GENERATIONS[name]
        if shape not in generation.shapes:
            raise LaunchError(
                f"{name} has no slice of shape {shape}; use one of {', '.join(generation.shapes)} "
                f"(or pass an accelerator type such as {generation.type_prefix}-"
                f"{8 * generation.cores_per_chip})."
            )
        chips = math.prod(int(d) for d in shape.split("x"))
    elif accelerator:
        prefix, count = accelerator.group(1), int(accelerator.group(2))
        name = next(n for n, g in GENERATIONS.items() if g.type_prefix == prefix)
        generation = GENERATIONS[name]
        if count == 0 or count % generation.cores_per_chip:
            raise LaunchError(
                f"{text}: {prefix} accelerator types count TensorCores, "
                f"{generation.cores_per_chip} per chip."
            )
        chips = count // generation.cores_per_chip
    else:
        examples = "v5e:16x16, v6e:16x16, v4:4x4x8, v5p:4x4x4 or v5litepod-256"
        raise LaunchError(f"unknown topology {topology!r}; use e.g. {examples}.")
    return TpuSlice(
        generation=name,
        accelerator_type=f"{generation.type_prefix}-{chips * generation.cores_per_chip}",
        chips=chips,
        hosts=max(1, chips // generation.chips_per_host),
        runtime_version=runtime_version or generation.runtime_version,
    )


# ---------------------------------------------------------------------------------------------
# Where commands go.

_NAME = re.compile(r"[a-z]([-a-z0-9]{0,60}[a-z0-9])?")


@dataclasses.dataclass(frozen=True)
class Target:
    """A queued resource and its TPU VM node(s): one per slice."""

    name: str
    zone: str
    project: str | None = None
    queued_resource: str | None = None  # default: the TPU name
    num_slices: int = 1

    def __post_init__(self):
        for label, value in (("TPU name", self.name), ("queued resource", self.qr)):
            if not value or not _NAME.fullmatch(value):
                raise LaunchError(
                    f"{label} {value!r} must be lowercase letters, digits and hyphens, starting "
                    "with a letter (set --name or MASKFEAT_TPU_NAME)."
                )
        if not self.zone:
            raise LaunchError("no zone: set --zone or MASKFEAT_ZONE (e.g. europe-west4-b).")
        if self.num_slices < 1:
            raise LaunchError(f"--num_slices must be at least 1, got {self.num_slices}.")

    @property
    def qr(self) -> str:
        return self.queued_resource or self.name

    @property
    def nodes(self) -> list[str]:
        """Node ids: the name itself, or ``name-0 .. name-(N-1)`` for N slices."""
        if self.num_slices == 1:
            return [self.name]
        return [f"{self.name}-{i}" for i in range(self.num_slices)]

    def location(self) -> list[str]:
        return ["--zone", self.zone] + (["--project", self.project] if self.project else [])


# ---------------------------------------------------------------------------------------------
# Queued resources.

_QUEUED = ["gcloud", "compute", "tpus", "queued-resources"]


def create_command(target: Target, tpu: TpuSlice, provisioning: str = "on-demand") -> list[str]:
    """``queued-resources create``. One slice gets ``--node-id``; several get ``--node-count``
    and ``--node-prefix`` (multi-slice: the nodes come up together and with the MEGASCALE_*
    settings JAX needs to talk across slices already set; queued resources set them up while
    the nodes initialize, as the MaxText maintainers explain in AI-Hypercomputer/maxtext#30).

    The TPU API requires node_count > 1 and names the nodes ``PREFIX-0`` .. ``PREFIX-(N-1)``
    (QueuedResource.Tpu.NodeSpec.MultisliceParams in the TPU v2 API reference)."""
    if provisioning not in PROVISIONING:
        raise LaunchError(f"--provisioning must be one of {', '.join(PROVISIONING)}.")
    # gcloud's reference for queued-resources create: --spot and --reserved are GA,
    # --best-effort is only in the alpha surface.
    gcloud = ["gcloud", "alpha"] if provisioning == "best-effort" else ["gcloud"]
    command = gcloud + _QUEUED[1:] + ["create", target.qr, *target.location()]
    command += ["--accelerator-type", tpu.accelerator_type]
    command += ["--runtime-version", tpu.runtime_version]
    if target.num_slices == 1:
        command += ["--node-id", target.name]
    else:
        command += ["--node-count", str(target.num_slices), "--node-prefix", target.name]
    if provisioning != "on-demand":
        command.append(f"--{provisioning}")
    return command


def state_command(target: Target) -> list[str]:
    return _QUEUED + ["describe", target.qr, *target.location(), "--format=value(state.state)"]


def describe_command(target: Target) -> list[str]:
    return _QUEUED + ["describe", target.qr, *target.location()]


def delete_command(target: Target) -> list[str]:
    """Deletes the queued resource and, with ``--force``, its TPU VMs; returns at once."""
    return _QUEUED + ["delete", target.qr, *target.location(), "--force", "--async", "--quiet"]


# ---------------------------------------------------------------------------------------------
# Commands on the workers.


def ssh_command(target: Target, node: str, worker: str, script: str) -> list[str]:
    """Runs ``script`` with bash on ``worker`` ("all" or an index) of ``node``. bash is named
    explicitly because the scripts use ``pipefail``, whatever the login shell is."""
    command = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", node, *target.location()]
    return command + [f"--worker={worker}", "--command", shlex.join(["bash", "-c", script])]


def scp_command(target: Target, node: str, local_path: str, remote_path: str) -> list[str]:
    command = ["gcloud", "compute", "tpus", "tpu-vm", "scp", local_path, f"{node}:{remote_path}"]
    return command + [*target.location(), "--worker=all"]


@dataclasses.dataclass(frozen=True)
class RemoteLayout:
    """Paths on every worker; relative ones are under the remote home directory."""

    code_dir: str = "maskfeat-jax"
    venv: str = "maskfeat-venv"
    log: str = "maskfeat-train.log"
    pid: str = "maskfeat-train.pid"

    def __post_init__(self):
        # setup replaces code_dir and venv wholesale, so neither may be the home directory.
        for label, path in (("--remote_dir", self.code_dir), ("--venv", self.venv)):
            parts = pathlib.PurePosixPath(_strip_home(path)).parts
            if not parts or parts == ("/",) or ".." in parts or parts == (".",):
                raise LaunchError(f"{label} {path!r} must name a directory below the home.")


def _strip_home(path: str) -> str:
    return path[2:] if path.startswith("~/") else path


def remote_path(path: str) -> str:
    """A bash word for ``path``: absolute paths as they are, others below ``$HOME``."""
    path = _strip_home(path)
    return shlex.quote(path) if path.startswith("/") else '"$HOME"/' + shlex.quote(path)


def _double_quoted(text: str) -> str:
    """``"text"`` when nothing in it is special inside double quotes (easier to read in the
    printed commands than nested single quotes), else the single-quoted form."""
    return f'"{text}"' if re.fullmatch(r'[^"$`\\!]*', text) else shlex.quote(text)


def jax_tpu_requirement(requirements: pathlib.Path = REPO_ROOT / "requirements.txt") -> str:
    """``jax[tpu]==X`` for the jax that requirements.txt pins (jax[tpu] adds libtpu)."""
    for line in requirements.read_text().splitlines():
        match = re.fullmatch(r"\s*jax\s*==\s*([0-9][\w.]*)\s*(#.*)?", line)
        if match:
            return f"jax[tpu]=={match.group(1)}"
    raise LaunchError(f"{requirements} pins no jax version (a line 'jax==X').")


def setup_script(
    layout: RemoteLayout,
    jax_requirement: str,
    repo_url: str | None = None,
    repo_ref: str = "main",
) -> str:
    """Puts the code in place and builds the venv, the same way on every worker.

    The code is the unpacked bundle (copied beforehand by ``scp``) or a clone of ``repo_url``
    at ``repo_ref``. The venv does not depend on the image's Python: uv (installed to
    ~/.local/bin unless present, with pip as the fallback installer) makes a Python 3.11 venv,
    downloading a standalone 3.11 when the image has none, and is rebuilt only when it holds
    another version. Then the pinned requirements, the TPU build of the same jax (it brings
    libtpu from PyPI) and gcsfs for gs:// paths go in.
    """
    code, venv = remote_path(layout.code_dir), remote_path(layout.venv)
    steps = ["set -euo pipefail", 'cd "$HOME"', f"rm -rf {code}"]
    if repo_url:
        steps += [
            f"git clone --quiet {shlex.quote(repo_url)} {code}",
            f"git -C {code} checkout --quiet --detach {shlex.quote(repo_ref)}",
        ]
    else:
        bundle = remote_path(BUNDLE_NAME)
        steps += [f"mkdir -p {code}", f"tar -xzf {bundle} -C {code}", f"rm -f {bundle}"]
    version = tuple(int(part) for part in PYTHON_VERSION.split("."))
    is_right_python = f'"import sys; sys.exit(sys.version_info[:2] != {version})"'
    report = '"import sys, jax; print(sys.executable, sys.version.split()[0], jax.__version__)"'
    steps += [
        'export PATH="$HOME/.local/bin:$PATH"',
        f"command -v uv >/dev/null 2>&1 || curl -LsSf {UV_INSTALLER} | sh"
        " || python3 -m pip install --user uv",
        f"{venv}/bin/python -c {is_right_python} 2>/dev/null"
        f" || {{ rm -rf {venv} && uv venv --python {PYTHON_VERSION} {venv}; }}",
        f"cd {code}",
        f"uv pip install --python {venv}/bin/python -r requirements.txt "
        + " ".join(_double_quoted(r) for r in (jax_requirement, GCS_REQUIREMENT)),
        f"{venv}/bin/python -c {report}",
    ]
    return "; ".join(steps)


@dataclasses.dataclass(frozen=True)
class RunPaths:
    workdir: str
    data_dir: str | None


def run_paths(
    config: str,
    bucket: str | None = None,
    workdir: str | None = None,
    data_dir: str | None = None,
    run_name: str | None = None,
) -> RunPaths:
    """The run's GCS workdir and tfds data_dir: given, or placed in ``bucket``
    (``gs://BUCKET/maskfeat/RUN`` and ``gs://BUCKET/tensorflow_datasets``).

    Both must be on GCS: every worker writes its share of each checkpoint to the same workdir
    and reads its share of the data, and TPU VM disks go away with the VMs."""
    bucket = (bucket or "").removeprefix("gs://").strip("/")
    if not workdir:
        if not bucket:
            raise LaunchError(
                "no bucket: set --bucket or MASKFEAT_BUCKET (or --workdir=gs://...) so that "
                "checkpoints and metrics go to GCS."
            )
        name = run_name or pathlib.PurePosixPath(config.split(":")[0]).stem
        workdir = f"gs://{bucket}/maskfeat/{name}"
    if not data_dir and bucket:
        data_dir = f"gs://{bucket}/tensorflow_datasets"
    for label, path in (("--workdir", workdir), ("--data_dir", data_dir)):
        if path is not None and not re.match(r"gs://[^/\s]+", path):
            raise LaunchError(
                f"{label} {path!r} is not on GCS: on TPU VMs it must be a gs:// path that "
                "every worker reads and writes."
            )
    return RunPaths(
        workdir=workdir.rstrip("/"), data_dir=data_dir.rstrip("/") if data_dir else None
    )


def check_overrides(args: Sequence[str]) -> list[str]:
    """The ``--config.key=value`` overrides given after ``--``, passed to the trainer as is."""
    for arg in args:
        if not re.match(r"--config\.[A-Za-z_][\w.]*=", arg):
            raise LaunchError(
                f"{arg!r}: after '--' only config overrides are passed on, e.g. "
                "--config.input.batch_size=4096."
            )
    return list(args)


def parse_env(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings (``--env``) as a dict."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise LaunchError(f"--env {item!r}: expected KEY=VALUE.")
        env[key] = value
    return env


def train_args(config: str, paths: RunPaths, overrides: Sequence[str] = ()) -> list[str]:
    """The trainer's arguments after ``python``; later overrides win over earlier values."""
    args = ["-m", "maskfeat_jax.main", f"--config={config}", f"--workdir={paths.workdir}"]
    if paths.data_dir:
        args.append(f"--config.input.data_dir={paths.data_dir}")
    return args + list(overrides)


def run_script(
    layout: RemoteLayout,
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    foreground: bool = False,
) -> str:
    """Starts training on one worker: all workers run the same script at about the same time
    and JAX joins them into one job (on multi-slice nodes through the MEGASCALE_* settings the
    runtime provides).

    In the background (default) the process is detached with ``nohup setsid`` so it outlives
    the ssh session; its output goes to the log file and its pid to the pid file that ``stop``
    reads. A worker where training already runs refuses to start a second one (the TPU chips
    take one process). In the foreground the output streams back through ssh and into the log.
    """
    code, venv = remote_path(layout.code_dir), remote_path(layout.venv)
    log, pid = remote_path(layout.log), remote_path(layout.pid)
    prefix = "env " + shlex.join(f"{k}={v}" for k, v in env.items()) + " " if env else ""
    launch = f"{prefix}{venv}/bin/python {shlex.join(args)}"
    steps = ["set -euo pipefail", f"cd {code}"]
    if foreground:
        return "; ".join(steps + [f"{launch} 2>&1 | tee {log}"])
    steps += [
        f'if [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then'
        ' echo "training already runs on $(hostname); stop it first" >&2; exit 1; fi',
        f"if [ -f {log} ]; then mv -f {log} {log}.1; fi",
        # '&' ends a command as ';' does, so the pid is saved in the same step.
        f"nohup setsid {launch} > {log} 2>&1 < /dev/null & echo $! > {pid}",
        f'echo "started on $(hostname): pid $(cat {pid}), log" {log}',
    ]
    return "; ".join(steps)


def logs_script(layout: RemoteLayout, follow: bool = True, lines: int = 100) -> str:
    follow_flag = " -F" if follow else ""
    return f"tail -n {int(lines)}{follow_flag} {remote_path(layout.log)}"


def stop_script(layout: RemoteLayout, grace_seconds: int = 180) -> str:
    """SIGTERM to the training process group (the trainer then saves a checkpoint at the
    current step: the preemption path), SIGKILL after ``grace_seconds``."""
    pid = remote_path(layout.pid)
    alive = 'alive() { kill -0 "$P" 2>/dev/null && [ "$(ps -o stat= -p "$P" | cut -c1)" != Z ]; }'
    steps = [
        "set -uo pipefail",
        f'if [ ! -f {pid} ]; then echo "no training started on $(hostname)"; exit 0; fi',
        f"P=$(cat {pid})",
        alive,
        f'if ! alive; then echo "not running on $(hostname)"; rm -f {pid}; exit 0; fi',
        # The process leads its own group (setsid) unless something changed that: then only it.
        'if [ "$(ps -o pgid= -p "$P" | tr -d " ")" = "$P" ]; then T="-$P"; else T="$P"; fi',
        'kill -TERM -- "$T"',
        f"for _ in $(seq 1 {int(grace_seconds)}); do alive || break; sleep 1; done",
        'if alive; then kill -KILL -- "$T"; echo "killed on $(hostname)";'
        ' else echo "stopped on $(hostname)"; fi',
        f"rm -f {pid}",
    ]
    return "; ".join(steps)
