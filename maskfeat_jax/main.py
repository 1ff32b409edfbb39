"""``python -m maskfeat_jax.main`` is ``maskfeat-train``; the command is ``commands/train.py``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("maskfeat_jax.commands.train", run_name="__main__", alter_sys=True)
