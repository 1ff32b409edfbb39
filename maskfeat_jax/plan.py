"""``python -m maskfeat_jax.plan``: the TPU planner's command, which lives in
``maskfeat_jax/commands/plan.py`` (the planner itself in ``maskfeat_jax/planning/``)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("maskfeat_jax.commands.plan", run_name="__main__", alter_sys=True)
