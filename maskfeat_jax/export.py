"""``python -m maskfeat_jax.export``: the command lives in ``maskfeat_jax.commands.export``,
the library in ``maskfeat_jax.interop.export``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("maskfeat_jax.commands.export", run_name="__main__", alter_sys=True)
