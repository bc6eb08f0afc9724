r"""BLINK cross-encoder (Wu et al., 2020, Sec. 3.2): reranks a bi-encoder's candidates.

  python -m zel_jax.train --config=configs/blink_crossencoder.py:runlocal --workdir=/tmp/cross \
      --config.data.dir=data/foldoc --config.data.candidates=/tmp/bi
  python -m zel_jax.train --config=configs/blink_crossencoder.py:variant=base --workdir=$W \
      --config.data.dir=/data/zeshel --config.data.candidates=$W_BI \
      --config.model.pretrained=/ckpt/bert-base-uncased

data.candidates is the bi-encoder's workdir (its evaluation wrote candidates/<split>.jsonl
for the training split and for every evaluated split) or one candidates file.

Variants:
  runlocal      CPU, all-MiniLM-L6-v2, lengths 32 + 32, top-8 candidates, 1000 steps of 4
                mentions at lr 1e-4 (about 25 minutes on 2 cores).
  variant=base  BLINK's ZESHEL recipe: bert-base-uncased over 128 + 128 tokens (rows of 255
                after the entity's [CLS] is dropped; BLINK's max_seq_length is 256), top-64
                candidates, lr 2e-5 with 10% warm-up, 5 epochs; BLINK trains 2 mentions per
                step (128 rows), this config 8 (512 rows) for a pod.
  variant=large the same with bert-large-uncased.
BLINK reports on ZESHEL test, macro-averaged over worlds, unnormalized accuracy 61.34 (base)
and 63.03 (large) after top-64 retrieval (Wu et al., 2020, Table 2).
"""

import ml_collections

from zel_jax.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="base", runlocal=False)
  config = ml_collections.ConfigDict()
  config.recipe = "blink"
  config.trainer = "crossencoder"
  config.seed = 0

  # Input.
  config.data = ml_collections.ConfigDict()
  config.data.dir = ""              # A ZESHEL-layout directory (documents/, mentions/).
  config.data.candidates = ""       # Bi-encoder workdir (or a candidates file) to rerank.
  config.data.train_split = "train"
  config.data.mention_length = 128
  config.data.entity_length = 128
  config.data.num_candidates = 64   # Top-k candidates per mention (train and eval).
  config.data.max_train_mentions = -1  # > 0: a fixed random subset of the training split.
  config.data.window_words = -1
  config.data.use_unused_markers = True

  # Model.
  config.model = common.encoder(
      {"base": "bert-base-uncased", "large": "bert-large-uncased"}.get(arg.variant,
                                                                       arg.variant))

  # Optimizer (BLINK: lr 2e-5, 10% warm-up, linear decay, clip 1.0).
  config.batch_size = 8             # Global batch: mentions per step (x num_candidates rows).
  config.grad_accum_steps = 1
  config.num_epochs = 5
  config.num_train_steps = -1
  config.optimizer = common.optimizer(learning_rate=2e-5)

  common.checkpoints(config, log_every=50, checkpoint_every=500, keep=3)
  config.init_from = ""

  common.mesh_and_sharding(config, mesh=[("data", -1), ("fsdp", 1)])
  config.eval_batch_size = 16       # Mentions per evaluation batch (x num_candidates rows).

  # Evaluation after training: reranking accuracy on these splits.
  config.evals = common.evals("rerank", splits=("val", "test"))

  if arg.runlocal:
    config.model = common.encoder("all-MiniLM-L6-v2")
    config.data.mention_length = 32
    config.data.entity_length = 32
    config.data.num_candidates = 8
    config.batch_size = 4
    config.num_train_steps = 1000
    config.optimizer.learning_rate = 1e-4
    config.log_every = 10
    config.checkpoint_every = 100
    config.eval_batch_size = 16
    config.evals.splits = ("test",)
  return config
