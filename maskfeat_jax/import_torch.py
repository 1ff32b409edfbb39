"""``python -m maskfeat_jax.import_torch``: the command lives in
``maskfeat_jax.commands.import_torch``, the library in ``maskfeat_jax.interop.import_torch``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("maskfeat_jax.commands.import_torch", run_name="__main__", alter_sys=True)
