"""`repwam train <stage>` arguments -> the stage's config: the CLI trains from them, and a pipeline reads what a job
would train (to check it against what a run under its `--out` recorded) the same way."""

from __future__ import annotations

import importlib
from pathlib import Path

from repwam.config import from_dict, load_run_config, parse_cli
from repwam.errors import RepwamError

STAGES = ("tokenizer", "lat", "wam", "plain")  # the stages whose options come from a config dataclass


def train_args(stage: str, args: list[str]):
    """-> (cfg, data, out, resume, train): the stage's config from `--recipe NAME` or `--config RUN/run.json` (the
    stage's default recipe without either) with the other options applied, and the stage's train function."""
    module = importlib.import_module(f"repwam.train.{stage}")
    cfg_cls, recipes = module.CONFIG, module.RECIPES
    args = list(args)
    default, data = recipes["default"], []

    def take(flag: str) -> str | None:
        if flag in args:
            i = args.index(flag)
            if i + 1 >= len(args):
                raise RepwamError(f"{flag} needs a value")
            value = args[i + 1]
            del args[i : i + 2]
            return value
        return None

    recipe, replay = take("--recipe"), take("--config")
    if recipe is not None:
        if recipe not in recipes:
            raise RepwamError(f"unknown {stage} recipe {recipe!r}; available: {sorted(recipes)}")
        default = recipes[recipe]
    if replay is not None:
        fields, data = load_run_config(replay, stage)
        default = from_dict(cfg_cls, fields)

    description = (f"Train the {stage} stage. Start from --recipe NAME ({', '.join(sorted(recipes))}) or a saved run "
                   f"(--config RUN/run.json), then override any field below.")
    a = parse_cli(args, f"repwam train {stage}", description, default,
                  [("data", list[str], list(data)), ("out", str, ""), ("resume", bool, False)])
    if not a.data or not a.out:
        raise RepwamError(f"repwam train {stage} needs --data DATASET [...] and --out RUN_DIR (see --help)")
    return a.cfg, [Path(d) for d in a.data], Path(a.out), a.resume, module.train
