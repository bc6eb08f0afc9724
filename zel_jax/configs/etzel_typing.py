r"""Ultra-fine entity typing, stage one of Sui et al. (COLING 2022): the label-wise attention
typing model, then type extraction over every entity of the knowledge base.

  # Type descriptions come from WordNet glosses (Debian's dict-wn, read as dictd data):
  apt-get update && cd /tmp && apt-get download dict-wn && dpkg -x dict-wn_*.deb /tmp/wn
  python -m zel_jax.train --config=configs/etzel_typing.py:runlocal --workdir=/tmp/typing \
      --config.data.dir=data/foldoc --config.typing.wordnet=/tmp/wn/usr/share/dictd
  python -m zel_jax.evaluate --workdir=/tmp/typing --split=test     # typing P/R/F1

Input `[CLS] mention [SEP] context [SEP]` -> X; G = V X^T with V the fixed [CLS] embeddings of
`[CLS] type [SEP] description [SEP]`; attention over real tokens; per-label output layer;
binary cross-entropy over all 10,331 UFET types. After training, every entity's types
(`title [SEP] description` in rows of 128 tokens, probability above 0.1 plus the argmax,
union over rows) are written to DATA/types/<world>.json, what configs/etzel_multitask.py
trains on.

Training examples: UFET crowd files when given (config.typing.ufet_train, ufet_val,
ufet_test, in the released JSON-lines layout), otherwise distant labels from the KB's own
descriptions (FOLDOC's subject tags and the head noun of each definition; see
zel_jax/recipes/etzel/types.py): each training mention typed with its gold entity's labels, each
training context document typed from its own description.

Variants:
  runlocal      CPU, all-MiniLM-L6-v2, inputs of 32 tokens, 300 steps of 32 examples.
  variant=base  the reference setting: bert-base-uncased, 128 tokens, batch 32, lr 1e-5,
                no weight decay, type descriptions of 80 tokens.
"""

import os

import ml_collections

from zel_jax.configs import common


def default_vocabulary() -> str:
  """UFET's type vocabulary, shipped with the recipe (zel_jax/recipes/etzel/ufet_types.txt);
  the config names the file only, importing nothing."""
  return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                       "recipes", "etzel", "ufet_types.txt"))


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="base", runlocal=False)
  config = ml_collections.ConfigDict()
  config.recipe = "etzel"
  config.trainer = "typing"
  config.seed = 0

  # Input.
  config.data = ml_collections.ConfigDict()
  config.data.dir = ""              # A ZESHEL-layout directory (documents/, mentions/).
  config.data.train_split = "train"
  config.data.use_unused_markers = True
  config.data.window_words = -1     # Words kept each side of a mention (-1: the document).

  config.typing = ml_collections.ConfigDict()
  config.typing.vocabulary = default_vocabulary()  # One type label per line (UFET's 10,331).
  config.typing.wordnet = "/usr/share/dictd"  # A dictd directory holding wn.index/wn.dict.dz;
                                    # "" describes every type by its label alone.
  config.typing.type_length = 80    # [CLS] type [SEP] description [SEP].
  config.typing.mention_length = 128
  config.typing.ufet_train = ""     # UFET crowd JSON lines; empty: distant KB labels.
  config.typing.ufet_val = ""
  config.typing.ufet_test = ""
  config.typing.threshold = 0.5     # Metrics: types above it, at least the most probable.
  config.typing.max_types = 32      # Types read back per row (the top-k of 10,331).
  config.typing.extract = True      # After training, extract types for every world.
  config.typing.extract_length = 128
  config.typing.extract_chunks = 8  # At most this many rows per entity.
  config.typing.extract_threshold = 0.1
  config.typing.extract_block = 8192  # Entities featurized and predicted at a time.
  config.typing.types_dir = ""      # Where extraction writes <world>.json; "": DATA/types.
  config.typing.extract_splits = ()  # Extract only for the worlds of these mention splits
                                     # (e.g. ("train",)); empty: every world.

  # Model.
  config.model = common.encoder({"base": "bert-base-uncased",
                                 "large": "bert-large-uncased"}.get(arg.variant, arg.variant))

  # Optimizer (the reference code: Adam, lr 1e-5, batch 32, no weight decay).
  config.batch_size = 32
  config.grad_accum_steps = 1
  config.num_epochs = 5
  config.num_train_steps = -1
  config.optimizer = common.optimizer(learning_rate=1e-5, weight_decay=0.0)
  config.optimizer.frozen = ("type_embeddings",)  # V is computed once and never trained.

  common.checkpoints(config, log_every=50, checkpoint_every=500, keep=3)
  config.init_from = ""

  common.mesh_and_sharding(config, mesh=[("data", -1), ("fsdp", 1)])
  config.eval_batch_size = 256

  config.evals = common.evals("typing", splits=("val", "test"))

  if arg.runlocal:
    config.model = common.encoder("all-MiniLM-L6-v2")
    config.typing.type_length = 32
    config.typing.mention_length = 32
    config.typing.extract_length = 64
    config.num_train_steps = 300
    config.optimizer.learning_rate = 1e-4
    config.log_every = 10
    config.checkpoint_every = 100
    config.eval_batch_size = 128
    config.evals.splits = ("test",)
  return config
