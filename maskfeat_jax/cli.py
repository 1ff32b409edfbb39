"""Command-line parsing shared by the entry points: config mistakes become one clear line.

Each command in ``maskfeat_jax/commands/`` defines its flags at module level (names shared
between commands with ``allow_override=True``: a process runs one command) and ends with
``run_command(main, __name__, required=[...])``. ml_collections reports a misspelt override
(``--config.model.widht=64``) as a traceback from deep inside flag parsing, and a missing
config file only when the config is first used; here both stop at once with the fix."""

from __future__ import annotations

import difflib
import glob
import importlib.util
import os
import sys
from typing import Sequence

from absl import app, flags

from maskfeat_jax.errors import ConfigError, UserError


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _overrides(argv: Sequence[str]) -> list[tuple[str, str]]:
    """(dotted key, the whole argument) of every ``--config.<key>[=value]``."""
    out = []
    for arg in argv:
        if arg.startswith("--config."):
            key = arg[len("--config.") :].split("=", 1)[0]
            out.append((key, arg))
    return out


def check_config_file(argv: Sequence[str]) -> None:
    value = _flag_value(argv, "config")
    if value is None:
        return  # absl reports a missing required flag itself
    path = value.split(":", 1)[0]
    if not os.path.isfile(path):
        known = sorted(glob.glob(os.path.join("configs", "*.py")))
        known = [k for k in known if not k.endswith(("__init__.py", "common.py"))]
        close = difflib.get_close_matches(path, known, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise ConfigError(
            f"--config {value}: there is no file {path!r} (run from the repository root).{hint} "
            f"Configs: {', '.join(known) or 'none found under ./configs'}."
        )


def load_config(value: str):
    """The config named by a ``--config`` value (``path[:variant]``), without overrides."""
    path, _, variant = value.partition(":")
    spec = importlib.util.spec_from_file_location("config_under_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def unknown_key(config, key: str) -> str | None:
    """Why ``key`` (dotted) names nothing in ``config``, with the closest existing key."""
    node, walked = config, []
    for part in key.split("."):
        children = list(node.keys()) if hasattr(node, "keys") else []
        if part not in children:
            where = ".".join(walked) or "the config"
            close = difflib.get_close_matches(part, children, n=1)
            suggestion = ".".join([*walked, close[0]]) if close else None
            hint = f"did you mean config.{suggestion}? " if suggestion else ""
            return (
                f"config.{key} does not exist ({where} has no {part!r}); {hint}"
                f"keys of {where}: {', '.join(sorted(children))}."
            )
        node = node[part]
        walked.append(part)
    return None


def exit_on_config_error(fn):
    """Runs ``fn`` (an absl main); a config or data mistake (``errors.UserError``) ends the run
    with its one-line message and exit code 2 instead of a traceback."""

    def wrapped(argv):
        try:
            return fn(argv)
        except UserError as e:
            print(f"{e.label}: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapped


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing, with config mistakes reported as one line and exit code 2."""
    try:
        check_config_file(argv)
        try:
            return flags.FLAGS(argv)
        except flags.Error:
            raise
        except (AttributeError, KeyError) as e:
            config = load_config(_flag_value(argv, "config") or "")
            for key, arg in _overrides(argv):
                if why := unknown_key(config, key):
                    raise ConfigError(f"{arg}: {why}") from e
            raise
    except ConfigError as e:
        print(f"Config error: {e}", file=sys.stderr)
        sys.exit(2)
    except flags.Error as e:
        print(f"FATAL Flags parsing error: {e}", file=sys.stderr)
        print("Pass --helpshort or --helpfull to see help on flags.", file=sys.stderr)
        sys.exit(1)


def run_command(main, module_name: str, required: Sequence[str] = ()) -> None:
    """Runs ``main`` as the program: ``module_name``'s flags are the ones ``--help`` shows
    (also when started through a console script), ``required`` must be given, a config or
    data mistake ends with one line and exit code 2."""
    own = flags.FLAGS.flags_by_module_dict().get(module_name, [])
    for flag in own:
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    if required:
        flags.mark_flags_as_required(list(required))
    app.run(exit_on_config_error(main), flags_parser=parse_flags)
