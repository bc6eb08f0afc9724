"""Pieces every experiment config shares: variant parsing, the encoder, mesh and sharding.

Configs follow big_vision: `get_config(arg)` takes a variant string such as
`variant=base,runlocal` (`--config=configs/x.py:variant=base,runlocal`), sections go
input -> model -> optimizer -> mesh/sharding -> evals, and `runlocal` shrinks everything so
the recipe runs on one CPU in minutes.
"""

import ml_collections


def parse_arg(arg, **defaults):
  """Parses "a=1,b=x,flag" into a ConfigDict over `defaults` (bare names set booleans)."""
  result = ml_collections.ConfigDict(dict(defaults))
  for part in (arg or "").split(","):
    part = part.strip()
    if not part:
      continue
    key, eq, value = part.partition("=")
    if key not in result:
      raise ValueError(f"unknown config argument {key!r} in {arg!r}; known: {sorted(defaults)}")
    default = defaults[key]
    if not eq:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
      result[key] = True
    elif isinstance(default, bool):
      result[key] = value.lower() in ("1", "true", "yes")
    elif isinstance(default, int):
      result[key] = int(value)
    elif isinstance(default, float):
      result[key] = float(value)
    else:
      result[key] = value
  return result


# Logical axis -> mesh axes, first match wins (zel_jax/sharding.py). FSDP splits every large
# weight over "fsdp"; a "model" axis, where a mesh has one, takes heads and mlp (tensor
# parallelism) first. A rule is skipped where the mesh axis is absent or does not divide.
LOGICAL_RULES = (
    ("batch", ("data", "fsdp")),
    ("heads", "model"),
    ("mlp", "model"),
    ("vocab", "model"),
    ("vocab", "fsdp"),
    ("embed", "fsdp"),
    ("mlp", "fsdp"),
    ("heads", "fsdp"),
    ("kv", None),
)


def mesh_and_sharding(config, mesh=(("data", -1), ("fsdp", 1))):
  """Sets config.mesh (axis name, size; -1 takes the remaining devices) and the rules.

  Tuples, not lists: ml_collections overrides tuple fields from the command line
  (--config.mesh="(('data',-1),('fsdp',2))") and refuses list fields."""
  config.mesh = tuple(tuple(axis) for axis in mesh)
  config.sharding = ml_collections.ConfigDict()
  config.sharding.batch_axes = ("data", "fsdp")
  config.sharding.logical_rules = tuple(tuple(rule) for rule in LOGICAL_RULES)
  # (regex over parameter paths such as "mention/layer_3/intermediate/kernel", spec per dim);
  # checked before the logical rules.
  config.sharding.param_rules = ()
  return config


def encoder(pretrained="all-MiniLM-L6-v2"):
  """A BERT encoder section: weights, compute dtype and rematerialization."""
  model = ml_collections.ConfigDict()
  # A Hugging Face BERT directory, a packaged model name or a hub repo id (docs/install.md).
  model.pretrained = pretrained
  model.dtype = "float32"        # Compute dtype; "bfloat16" on TPUs/GPUs. Params stay fp32.
  model.remat = ""               # "", "full", "dots" or "dots_no_batch" (models/bert.py).
  model.hidden_dropout = 0.1
  model.attention_dropout = 0.1
  return model


def optimizer(learning_rate, warmup_fraction=0.1, weight_decay=0.01, max_grad_norm=1.0,
              warmup_steps=0):
  """AdamW with linear warm-up (a fraction of the run, or warmup_steps when > 0) and linear
  decay, gradients clipped at max_grad_norm (0: not clipped); zel_jax/optim.py."""
  section = ml_collections.ConfigDict()
  section.learning_rate = learning_rate
  section.warmup_fraction = warmup_fraction
  section.warmup_steps = warmup_steps
  section.weight_decay = weight_decay
  section.max_grad_norm = max_grad_norm
  return section


def checkpoints(config, log_every=50, checkpoint_every=500, keep=3):
  """Metrics every log_every steps; a checkpoint every checkpoint_every steps (and at the
  last), the newest `keep` kept."""
  config.log_every = log_every
  config.checkpoint_every = checkpoint_every
  config.keep_checkpoints = keep
  return config


def evals(evaluator: str, splits=("val", "test"), every: int = 0):
  """The evaluation section: `type` names the recipe's evaluator, run on `splits` after
  training and, when every > 0, every that many steps during it (zel_jax/evals/base.py).
  best_metric ("<split>/<metric>", e.g. "val/recall@64", higher is better): the parameters
  of the step that scored best among those evaluations are kept in W/best/."""
  section = ml_collections.ConfigDict()
  section.type = evaluator
  section.splits = tuple(splits)
  section.every = every
  section.best_metric = ""
  return section
