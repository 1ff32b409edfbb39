"""`pip install -e .` in a new virtual environment gives every console script, and each one
answers --help with its own flags."""

import pathlib
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_editable_install_gives_console_scripts_that_answer_help(tmp_path):
    venv = tmp_path / "venv"
    # The pinned dependencies come from this interpreter's site-packages; the package and its
    # entry points are installed into the venv (the build fetches setuptools from the index).
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    install = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "-e",
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    helps = {
        name: subprocess.Popen(
            [str(venv / "bin" / name), "--help"],
            cwd=tmp_path,  # not the checkout: the installed package must be found
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in SCRIPTS
    }
    expected_flag = {
        "maskfeat-train": "--workdir",
        "maskfeat-eval": "--checkpoint",
        "maskfeat-probe": "--workdir",
        "maskfeat-visualize": "--num_images",
        "maskfeat-plan": "--topology",
        "maskfeat-export": "--naming",
        "maskfeat-import": "--source",
        "maskfeat-prepare-video": "--videos_dir",
        "maskfeat-digits": "--seeds",
    }
    for name, process in helps.items():
        out, _ = process.communicate(timeout=300)
        # absl's --help prints the usage and exits with 1.
        assert process.returncode == 1 and "USAGE:" in out, (name, out[-2000:])
        assert expected_flag[name] in out, (name, out[-2000:])
        assert "Traceback" not in out, (name, out[-2000:])
