"""The commands README.md and the configs' docstrings tell users to run, run as written.

Every command is read out of the docs and run with bash from a sandbox folder (with the
repository's ``configs/`` in it, as in a checkout) and nothing else changed but:
- the variables the docs use ($DATA_DIR, $TFDS_DIR, $WORKDIR, $PT, ...) point into the sandbox
  at small real data made here: an imagenet2012 tfds build, Kinetics-style video folders
  prepared by the documented ``prepare_video`` commands;
- ``gs://bucket/`` is a local folder;
- arguments appended at the end cut a long run to a step or two of a smaller model;
- XLA compiles with the tests' flags (tests/support/runs.py: faster compiles, same programs).
A command that appears in the docs and not in ``RECIPES`` fails the coverage test, and a
recipe whose command is no longer documented fails it too."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from tests.support.runs import ROOT, xla_flags

# ------------------------------------------------------------------------------------------
# Finding the commands.

_STARTS = ("python -m ", "pip install ")


def _joined(lines: list[str], i: int) -> tuple[str, int]:
    """The command starting on line i with its backslash continuations; the next line."""
    text = lines[i].strip()
    while text.endswith("\\"):
        i += 1
        text = text[:-1].rstrip() + " " + lines[i].strip()
    return text, i + 1


def readme_commands(path: str) -> list[str]:
    """Commands in the indented code blocks of a Markdown file."""
    lines, out, i = open(path).read().splitlines(), [], 0
    while i < len(lines):
        if re.match(r" {4,}", lines[i]) and lines[i].strip().startswith(_STARTS):
            text, i = _joined(lines, i)
            out.append(text)
        else:
            i += 1
    return out


def docstring_commands(path: str) -> list[str]:
    """Commands in a config's docstring: the lines of its Run section and quoted commands
    with arguments."""
    doc = open(path).read().split('"""')[1]
    lines, out, i = doc.splitlines(), [], 0
    while i < len(lines):
        start = lines[i].find("python -m ")
        if start < 0:
            i += 1
            continue
        quoted = lines[i][:start].endswith("`")
        lines[i] = lines[i][start:]
        text, i = _joined(lines, i)
        text = text.split("`")[0].strip() if quoted else text
        if len(text.split()) > 3:  # `python -m module` alone names a module, not a command
            out.append(text)
    return out


def documented_commands() -> dict[str, list[str]]:
    """Each distinct command (whitespace collapsed) -> the files that show it."""
    found: dict[str, list[str]] = {}
    sources = [("README.md", readme_commands(os.path.join(ROOT, "README.md")))]
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
        if not path.endswith(("__init__.py", "common.py")):
            sources.append((os.path.relpath(path, ROOT), docstring_commands(path)))
    for name, commands in sources:
        for command in commands:
            found.setdefault(" ".join(command.split()), []).append(name)
    return found


# ------------------------------------------------------------------------------------------
# How each command is run small.

STEPS = ["--config.total_steps=2", "--config.optim.warmup_steps=1", "--config.log_every_steps=1"]
NO_PICTURES = ["--config.visualize_every_steps=0"]
VIT = [*STEPS, "--config.input.batch_size=8", "--config.model.depth=1"]
VIT_PT = [*VIT, *NO_PICTURES]
VIT_FT = [*VIT, "--config.eval.batch_size=8"]
MVIT = [
    *STEPS,
    "--config.input.batch_size=8",
    "--config.model.depth=4",
    "--config.model.stage_starts=(1,2,3)",
    "--config.model.embed_dim=16",
    "--config.model.num_heads=1",
    "--config.model.image_size=64",
    "--config.model.num_frames=8",
    "--config.input.short_side=0",
    # The op forms accelerators run (tests/support/steps.py); demo_video keeps the CPU forms.
    "--config.model.kernels=reference",
]
MVIT_PT = [*MVIT, "--config.mask.grid=(4,2,2)", *NO_PICTURES]
MVIT_FT = [*MVIT, "--config.eval.batch_size=8", "--config.eval.num_clips=2"]
# The MViTv2-L recipes cut to the small model in float32 without rematerialisation (bfloat16
# and remat have tests of their own in tests/unit/models/): the pretraining step is then the
# S recipe's program, loaded from the compilation cache instead of compiled again.
AS_S = ["--config.model.dtype=float32", "--config.model.remat=False"]
SMALL_EMBEDDED_VIDEOS = [
    "--config.input.embedded_videos.videos_per_photo=1",
    "--config.input.embedded_videos.num_frames=40",
    "--config.input.embedded_videos.height=128",
    "--config.input.embedded_videos.width=160",
]


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str  # what later recipes call this run
    append: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # variable -> sandbox path, or a run's name
    needs: tuple[str, ...] = ()  # runs (by name) or data ("tfds", "k400") made first
    outputs: tuple[str, ...] = ()  # sandbox paths the command must leave
    run: bool = True  # False: an install step, checked but not run here
    check: Callable[[str], None] | None = None  # more checks on the finished run's folder


def recipe(name, *append, env=(), needs=(), outputs=(), run=True, check=None):
    return Recipe(
        name, tuple(append), tuple(env.items()) if env else (), needs, outputs, run, check
    )


def _video_demo_trained(folder: str) -> None:
    """The video demo read its clips from the embedded H.264 videos, which it built in the
    workdir on first use, skipped none of them, and its masked HOG loss fell."""
    workdir = os.path.join(folder, "runs", "demo_video")
    assert os.path.isfile(os.path.join(workdir, "embedded_videos", "train.json"))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    assert all(np.isfinite(line["loss"]) and line["skipped_inputs"] == 0 for line in lines)
    assert lines[-1]["loss"] < lines[0]["loss"]  # 0.164 -> 0.129 when measured


def _workdir(name):
    return {"WORKDIR": f"runs/{name}"}


# Where the named runs leave their workdirs (the variables of later commands point there).
VIT_B_PT_README, VIT_B_FT_README = "runs/vit_b_pt_readme", "runs/vit_b_ft_readme"


RECIPES = {
    # README: quick start.
    "pip install -r requirements.txt && python -m maskfeat_jax.main --config configs/demo.py "
    "--workdir runs/demo": recipe(
        "demo", *STEPS, *NO_PICTURES, outputs=("runs/demo/checkpoints/2", "runs/demo/metrics.jsonl")
    ),
    "pip install -r requirements-test.txt && python -m pytest -q -n 2": recipe("tests", run=False),
    'python -m pytest -q -n 2 -m "not slow"': recipe("fast_tests", run=False),
    # The same workdir again: the finished run is resumed and ends at once.
    "python -m maskfeat_jax.main --config configs/demo.py --workdir runs/demo": recipe(
        "demo_again", *STEPS, *NO_PICTURES, needs=("demo",), outputs=("runs/demo/checkpoints/2",)
    ),
    "python -m maskfeat_jax.main --config configs/demo_video.py --workdir runs/demo_video": recipe(
        "demo_video",
        *STEPS,
        *NO_PICTURES,
        "--config.model.depth=4",
        "--config.model.stage_starts=(1,2,3)",
        "--config.model.embed_dim=16",
        "--config.model.image_size=64",
        "--config.mask.grid=(4,2,2)",
        *SMALL_EMBEDDED_VIDEOS,
        "--config.total_steps=4",  # enough for the loss to fall
        outputs=("runs/demo_video/checkpoints/4",),
        check=_video_demo_trained,
    ),
    # README: configs and data.
    "python -m maskfeat_jax.main --config configs/in1k_vit_b_pretrain.py:300ep "
    "--config.input.data_dir=$TFDS_DIR --config.input.batch_size=4096 --workdir $WORKDIR": recipe(
        "vit_b_pt_readme",
        *VIT_PT,
        env=_workdir("vit_b_pt_readme"),
        needs=("tfds",),
        outputs=("runs/vit_b_pt_readme/checkpoints/2",),
    ),
    "python -m maskfeat_jax.data.prepare_video --videos_dir videos/train --out $DATA "
    "--split train": recipe(
        "records_train", needs=("videos",), outputs=("data/train.json", "data/classes.txt")
    ),
    "python -m maskfeat_jax.data.prepare_video --videos_dir videos/val --out $DATA --split "
    "validation --classes $DATA/classes.txt # the same label indices as train": recipe(
        "records_validation", needs=("videos", "records_train"), outputs=("data/validation.json",)
    ),
    # README: watching, export and import.
    "python -m maskfeat_jax.visualize --workdir runs/demo [--num_images 4] [--out fig.png]": recipe(
        "visualize", needs=("demo",), outputs=("fig.png",)
    ),
    "python -m maskfeat_jax.export --checkpoint runs/demo --naming timm --out vit.safetensors": (
        recipe("export", needs=("demo",), outputs=("vit.safetensors",))
    ),
    "python -m maskfeat_jax.import_torch --source ssl_checkpoint_epoch_00300.pyth --naming "
    "slowfast --config configs/in1k_vit_b_pretrain.py --out weights/vit_b_pt": recipe(
        "import", needs=("slowfast_vit_b",), outputs=("weights/vit_b_pt",)
    ),
    # README: fine-tuning, evaluation, linear probing, the digits experiment.
    "python -m maskfeat_jax.main --config configs/in1k_vit_b_finetune.py "
    "--config.init_from=$PRETRAIN_WORKDIR --config.input.data_dir=$TFDS_DIR --workdir "
    "$WORKDIR": recipe(
        "vit_b_ft_readme",
        *VIT_FT,
        env={"PRETRAIN_WORKDIR": VIT_B_PT_README, "WORKDIR": VIT_B_FT_README},
        needs=("tfds", "vit_b_pt_readme"),
        outputs=("runs/vit_b_ft_readme/results.json",),
    ),
    "python -m maskfeat_jax.evaluate --config configs/in1k_vit_b_finetune.py "
    "--config.input.data_dir=$TFDS_DIR --workdir $WORKDIR": recipe(
        "evaluate",
        "--config.model.depth=1",
        "--config.eval.batch_size=8",
        env={"WORKDIR": VIT_B_FT_README},
        needs=("tfds", "vit_b_ft_readme"),
    ),
    "python -m maskfeat_jax.linear_probe --config configs/digits.py:probe "
    "--config.init_from=$PRETRAIN_WORKDIR --workdir $WORKDIR": recipe(
        "linear_probe",
        "--config.probe.epochs=1",
        env={"PRETRAIN_WORKDIR": "runs/digits_pretrain", **_workdir("probe")},
        needs=("digits_pretrain",),
        outputs=("runs/probe/linear_probe.json",),
    ),
    "python -m maskfeat_jax.experiments.digits --workdir runs/digits": recipe(
        "digits_experiment",
        "--seeds=0",
        "--rows=random,hog",
        "--pretrain_epochs=1",
        "--finetune_epochs=1",
        "--probe=false",
    ),
    # The same workdir: the rows the run above finished are resumed, only the new one runs.
    "python -m maskfeat_jax.experiments.digits --workdir runs/digits --rows hog --hog_inputs "
    "pixels,normalized": recipe(
        "digits_hog_inputs",
        "--seeds=0",
        "--pretrain_epochs=1",
        "--finetune_epochs=1",
        "--probe=false",
        needs=("digits_experiment",),
        outputs=("runs/digits/seed0/finetune_hog_normalized/results.json",),
    ),
    # README: planning.
    "pip install -r requirements-plan.txt # libtpu: describes TPU chips, no TPU needed": recipe(
        "plan_requirements", run=False
    ),
    "python -m maskfeat_jax.plan --config configs/in1k_vit_l_pretrain.py --topology v5e:16x16 "
    "--config.input.batch_size=4096 [--num_slices 2] [--json plan.json] [--dump_hlo "
    "step.hlo]": recipe(
        # Unscanned: one TPU compile instead of two (the scanned plan has a test of its own);
        # one image per chip compiles in half the time.
        "plan",
        "--config.model.depth=1",
        "--config.model.scan=False",
        "--config.input.batch_size=512",
        outputs=("plan.json", "step.hlo"),
    ),
    # README: benchmarks.
    "python -m benchmarks.run # writes benchmarks/results/latest.{json,md}": recipe(
        "benchmarks", "--quick", "--no-compile", "--repeats=1", "--out=bench"
    ),
    # Config docstrings.
    "python -m maskfeat_jax.main --config configs/in1k_vit_b_pretrain.py "
    "--config.input.data_dir=$DATA_DIR --workdir gs://bucket/maskfeat/vit_b": recipe(
        "vit_b_pt",
        *VIT_PT,
        env={"DATA_DIR": "tfds"},
        needs=("tfds", "vit_b_pt_readme"),  # after it: the same program, compiled once
        outputs=("bucket/maskfeat/vit_b/checkpoints/2",),
    ),
    "python -m maskfeat_jax.main --config configs/in1k_vit_l_pretrain.py "
    "--config.input.data_dir=$DATA_DIR --workdir gs://bucket/maskfeat/vit_l": recipe(
        "vit_l_pt",
        *VIT_PT,
        env={"DATA_DIR": "tfds"},
        needs=("tfds",),
        outputs=("bucket/maskfeat/vit_l/checkpoints/2",),
    ),
    "python -m maskfeat_jax.main --config configs/in1k_vit_b_finetune.py --config.init_from=$PT "
    "--config.input.data_dir=$DATA_DIR --workdir gs://bucket/ft_vit_b": recipe(
        "vit_b_ft",
        *VIT_FT,
        env={"DATA_DIR": "tfds", "PT": "bucket/maskfeat/vit_b"},
        needs=("tfds", "vit_b_pt", "vit_b_ft_readme"),  # after it: the same program
        outputs=("bucket/ft_vit_b/results.json",),
    ),
    "python -m maskfeat_jax.main --config configs/in1k_vit_l_finetune.py --config.init_from=$PT "
    "--config.input.data_dir=$DATA_DIR --workdir gs://bucket/ft_vit_l": recipe(
        "vit_l_ft",
        *VIT_FT,
        env={"DATA_DIR": "tfds", "PT": "bucket/maskfeat/vit_l"},
        needs=("tfds", "vit_l_pt"),
        outputs=("bucket/ft_vit_l/results.json",),
    ),
    "python -m maskfeat_jax.data.prepare_video --videos_dir k400/train --out $DATA_DIR "
    "--split train": recipe(
        "k400_records",
        env={"DATA_DIR": "k400_data"},
        needs=("videos",),
        outputs=("k400_data/train.json",),
    ),
    "python -m maskfeat_jax.main --config configs/k400_mvitv2_s_pretrain.py "
    "--config.input.data_dir=$DATA_DIR --workdir gs://bucket/maskfeat/mvit_s": recipe(
        "mvit_s_pt",
        *MVIT_PT,
        env={"DATA_DIR": "k400_data"},
        needs=("k400_records",),
        outputs=("bucket/maskfeat/mvit_s/checkpoints/2",),
    ),
    "python -m maskfeat_jax.main --config configs/k400_mvitv2_l_pretrain.py "
    "--config.input.data_dir=$DATA_DIR --workdir gs://bucket/maskfeat/mvit_l": recipe(
        "mvit_l_pt",
        *MVIT_PT,
        *AS_S,
        env={"DATA_DIR": "k400_data"},
        needs=("k400_records",),
        outputs=("bucket/maskfeat/mvit_l/checkpoints/2",),
    ),
    "python -m maskfeat_jax.main --config configs/k400_mvitv2_s_finetune.py "
    "--config.init_from=$PT --config.input.data_dir=$DATA_DIR --workdir gs://bucket/ft_mvit_s": (
        recipe(
            "mvit_s_ft",
            *MVIT_FT,
            env={"DATA_DIR": "k400_data", "PT": "bucket/maskfeat/mvit_s"},
            needs=("k400_validation", "mvit_s_pt"),
            outputs=("bucket/ft_mvit_s/results.json",),
        )
    ),
    "python -m maskfeat_jax.main --config configs/k400_mvitv2_l_finetune.py "
    "--config.init_from=$PT --config.input.data_dir=$DATA_DIR --workdir gs://bucket/ft_mvit_l": (
        recipe(
            "mvit_l_ft",
            *MVIT_FT,
            *AS_S,
            env={"DATA_DIR": "k400_data", "PT": "bucket/maskfeat/mvit_l"},
            needs=("k400_validation", "mvit_l_pt"),
            outputs=("bucket/ft_mvit_l/results.json",),
        )
    ),
}
# Named runs that are not documented commands themselves: what the documented ones start from.
SETUP = {  # name -> (command, what it needs)
    "digits_pretrain": (
        "python -m maskfeat_jax.main --config configs/digits.py:pretrain --workdir "
        "runs/digits_pretrain --config.total_steps=2 --config.optim.warmup_steps=1 "
        "--config.visualize_every_steps=0",
        (),
    ),
    "k400_validation": (
        "python -m maskfeat_jax.data.prepare_video --videos_dir videos/val --out k400_data "
        "--split validation --classes k400_data/classes.txt",
        ("videos", "k400_records"),
    ),
}
BY_NAME = {r.name: (command, r) for command, r in RECIPES.items()}


def test_every_documented_command_has_a_recipe_and_every_recipe_is_documented():
    documented = set(documented_commands())
    assert sorted(documented - set(RECIPES)) == [], "documented but never run"
    assert sorted(set(RECIPES) - documented) == [], "run but no longer documented"


def test_install_steps_name_real_files_and_the_test_command_is_what_ci_runs():
    for command, r in RECIPES.items():
        for file in re.findall(r"pip install -r (\S+)", command):
            assert os.path.isfile(os.path.join(ROOT, file)), (command, file)
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "python -m pip install -q -r requirements-test.txt" in ci
    assert "python -m pytest -q" in ci


# ------------------------------------------------------------------------------------------
# The sandbox: data the commands read, and the runs they build on.


def _write_videos(root: str, per_class: int, seed: int) -> None:
    """Kinetics-style folders root/<class>/<file>.mp4 of real photos filmed panning."""
    from skimage import data as photos

    from maskfeat_jax.data import embedded_video

    rng = np.random.default_rng(seed)
    for name, photo in (("astronaut", photos.astronaut()), ("coffee", photos.coffee())):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for k in range(per_class):
            y, x = rng.integers(0, 200, size=2)
            frames = np.stack(
                [photo[y + t : y + t + 96, x + 2 * t : x + 2 * t + 128] for t in range(40)]
            )
            with open(os.path.join(root, name, f"{name}_{k}.mp4"), "wb") as f:
                f.write(embedded_video.encode_h264(frames, 30, gop=20))


# Runs at a time: compiling is mostly single-threaded, so two keep both cores busy.
PARALLEL = 2
DATA_STEPS = ("tfds", "videos", "slowfast_vit_b")


class Sandbox:
    """A user's folder. Every named step runs once, in a thread of its own that waits for the
    steps it needs; at most PARALLEL commands run at a time."""

    def __init__(self, path: str):
        self.path = path
        self.results: dict[str, subprocess.CompletedProcess | Exception | None] = {}
        self._finished: dict[str, threading.Event] = {}
        self.seconds: dict[str, float] = {}  # each step's own time, for reading with -s
        self._slots = threading.Semaphore(PARALLEL)
        os.symlink(os.path.join(ROOT, "configs"), os.path.join(path, "configs"))

    def at(self, relative: str) -> str:
        return os.path.join(self.path, relative)

    def start(self, name: str) -> None:
        if name in self._finished:
            return
        for need in self.needs(name):
            self.start(need)
        self._finished[name] = threading.Event()
        threading.Thread(target=self._step, args=(name,), daemon=True).start()

    def needs(self, name: str) -> tuple[str, ...]:
        if name in DATA_STEPS:
            return ()
        if name in SETUP:
            return SETUP[name][1]
        return BY_NAME[name][1].needs

    def wait(self, name: str) -> subprocess.CompletedProcess | None:
        self.start(name)
        self._finished[name].wait()
        result = self.results[name]
        if isinstance(result, Exception):
            raise result
        return result

    def _step(self, name: str) -> None:
        try:
            for need in self.needs(name):
                self._finished[need].wait()
                if isinstance(self.results[need], Exception):
                    raise RuntimeError(f"{name} needs {need}, which failed")
            with self._slots:
                start = time.perf_counter()
                self.results[name] = self._do(name)
                self.seconds[name] = time.perf_counter() - start
        except Exception as e:  # reported by the test that waits for this step
            self.results[name] = e
        finally:
            self._finished[name].set()

    def _do(self, name: str) -> subprocess.CompletedProcess | None:
        if name == "tfds":
            from tests.support import tfds_fixture

            tfds_fixture.write_imagenet2012(self.at("tfds"))
        elif name == "videos":
            _write_videos(self.at("videos/train"), per_class=3, seed=0)
            _write_videos(self.at("videos/val"), per_class=1, seed=1)
            os.symlink(self.at("videos"), self.at("k400"))
        elif name == "slowfast_vit_b":
            _write_slowfast_vit_b(self.at("ssl_checkpoint_epoch_00300.pyth"))
        else:
            command, r = (SETUP[name][0], None) if name in SETUP else BY_NAME[name]
            result = self.run(command, r)
            if result.returncode != 0:
                raise AssertionError(f"{name}: exit {result.returncode}\n{result.stderr[-4000:]}")
            return result
        return None

    def run(self, command: str, r: Recipe | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=ROOT, DATA=self.at("data"), TFDS_DIR=self.at("tfds"))
        env["XLA_FLAGS"] = xla_flags()  # a user's machine: one CPU device, not the tests' eight
        # Runs of the same program (the README's and a docstring's form of one recipe) compile
        # it once, through the run's persistent compilation cache (tests/conftest.py), as a
        # user's repeated runs can.
        # `python` is this interpreter, as in an activated virtual environment.
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
        env.update({variable: self.at(place) for variable, place in (r.env if r else ())})
        text = command.split(" # ")[0]  # a trailing comment would swallow what is appended
        text = re.sub(r"\[([^\]]*)\]", r"\1", text)  # optional parts, all given
        text = text.replace("gs://bucket/", self.at("bucket") + "/")
        if text.startswith("pip install"):
            text = text.split("&&", 1)[1].strip()
        text = " ".join([text, *map(shlex.quote, r.append if r else ())])
        return subprocess.run(
            ["bash", "-c", text], cwd=self.path, env=env, capture_output=True, text=True,
            timeout=1200,
        )  # fmt: skip


def _write_slowfast_vit_b(path: str) -> None:
    """A SlowFast MaskFeat ViT-B pretraining checkpoint (random weights) as a .pyth file."""
    from flax import nnx

    from configs import in1k_vit_b_pretrain
    from maskfeat_jax import models
    from maskfeat_jax.interop import export, torch_names

    model = models.from_config(in1k_vit_b_pretrain.get_config().model, nnx.Rngs(0), target_size=108)
    flat = torch_names.flat_params(model)
    export.write_pyth(path, export.export_params(flat, model.spec, "slowfast"))


RUN = [command for command, r in RECIPES.items() if r.run]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    box = Sandbox(str(tmp_path_factory.mktemp("user")))
    for command in RUN:  # all at once: each test then waits for its own
        box.start(RECIPES[command].name)
    return box


@pytest.mark.parametrize("command", RUN, ids=[RECIPES[c].name for c in RUN])
def test_documented_command_runs_as_written(sandbox, command):
    r = RECIPES[command]
    result = sandbox.wait(r.name)
    print(f"{r.name}: {sandbox.seconds[r.name]:.0f} s")
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for output in r.outputs:
        assert os.path.exists(sandbox.at(output)), (output, result.stderr[-3000:])
    if r.check is not None:
        r.check(sandbox.path)
