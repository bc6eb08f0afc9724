r"""EntQA retriever (Zhang, Hua and Stratos, ICLR 2022, Sec. 2.1): passages -> entities.

  python -m zel_jax.train --config=configs/entqa_retriever.py:runlocal --workdir=/tmp/eq_ret \
      --config.data.dir=data/foldoc --config.init_from=/tmp/bi
  python -m zel_jax.train --config=configs/entqa_retriever.py:variant=base --workdir=$W_RET \
      --config.data.dir=/data/zeshel --config.model.pretrained=/ckpt/bert-base-uncased \
      --config.init_from=$W_BLINK_BI

Documents are cut into passages of 32 wordpieces with stride 16, each followed by the
document's topic; a passage's gold entities are those whose spans lie wholly inside it.
init_from: a BLINK bi-encoder workdir to start from (the paper starts from BLINK's);
empty starts from model.pretrained. Evaluation writes candidates/passages_<split>.jsonl,
which the reader (configs/entqa_reader.py) trains on and reads.

Variants:
  runlocal      CPU, all-MiniLM-L6-v2, entities of 32 tokens, 1,000 training passages,
                8 negatives (7 random, 1 hard), 250 steps of 8 passages (2 epochs: mined
                twice); evaluates a 2,000-passage training subset and test, top 16.
  variant=base  the paper's retriever setting: bert-base (the authors start from BLINK's
                bert-large bi-encoder), passages 32 / 16 + topic, entities 128 tokens,
                64 negatives of which 10% hard from the top 100, lr 2e-6 with 20% warm-up,
                4 epochs of 32 passages (the authors: 4 per GPU x 2 accumulation x 4 GPUs),
                top 100 candidates.
EntQA's end-to-end result with this retriever and its reader: InKB micro F1 85.8 on AIDA test
(GERBIL); the reader's README section has the rest.
"""

import ml_collections

from zel_jax.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="base", runlocal=False)
  config = ml_collections.ConfigDict()
  config.recipe = "entqa"
  config.trainer = "entqa_retriever"
  config.seed = 0

  # Input.
  config.data = ml_collections.ConfigDict()
  config.data.dir = ""              # A ZESHEL-layout directory (documents/, mentions/).
  config.data.train_split = "train"
  config.data.documents = "mentions"  # Which documents form a split: those with mentions
                                      # in it, or "dictd_split" (a dictd world's own split
                                      # of its entries, gold-less documents included).
  config.data.passage_length = 32   # L wordpieces per passage.
  config.data.passage_stride = 16   # S: consecutive passages overlap by L - S.
  config.data.topic = "title"       # Appended after [SEP]: "title", "first_sentence",
                                    # "first_token" or "none".
  config.data.topic_tokens = 8
  config.data.entity_length = 128
  config.data.max_golds = 16        # Gold entities per training passage (more: the first).
  config.data.max_train_passages = -1  # > 0: a fixed random subset of the passages with golds.
  config.data.exclude_self = True  # A document that is itself an entity never retrieves
                                   # itself (dictd worlds, ZESHEL context documents).
  config.data.use_unused_markers = True

  # Model: BLINK's bi-encoder, passages through the mention tower.
  config.model = common.encoder(
      {"base": "bert-base-uncased", "large": "bert-large-uncased"}.get(arg.variant,
                                                                       arg.variant))
  config.model.pooling = "cls"
  config.model.share_towers = False

  # Objective: multi-label NCE (Eq. 1) over each gold and these negatives.
  config.negatives = ml_collections.ConfigDict()
  config.negatives.num = 64
  config.negatives.hard_fraction = 0.1   # The rest are random entities of the world.
  config.negatives.hard_top = 100        # Hard ones come from the current top-N, mined
                                         # again when each epoch starts.

  # Optimizer.
  config.batch_size = 32            # Passages per step.
  config.grad_accum_steps = 1
  config.num_epochs = 4
  config.num_train_steps = -1
  config.optimizer = common.optimizer(learning_rate=2e-6, warmup_fraction=0.2)

  common.checkpoints(config, log_every=50, checkpoint_every=500, keep=3)
  config.init_from = ""             # A BLINK bi-encoder workdir to start from.

  common.mesh_and_sharding(config, mesh=[("data", -1), ("fsdp", 1)])
  config.eval_batch_size = 256

  # Evaluation: passage recall@k on these splits; candidates written for the reader.
  config.evals = common.evals("passages", splits=("train", "val", "test"))
  config.evals.max_train_passages = -1  # > 0: a fixed subset of the training split.
  config.evals.store = "device"     # Also for mining and linking: "device" (the entity
                                    # table sharded over the mesh, exact top-k there),
                                    # "exact" or "scann" (on the host).
  config.evals.top_k = 100

  if arg.runlocal:
    config.model = common.encoder("all-MiniLM-L6-v2")
    config.model.pooling = "cls"
    config.model.share_towers = False
    config.data.entity_length = 32
    config.data.max_golds = 4
    config.data.max_train_passages = 1000
    config.negatives.num = 8
    config.negatives.hard_top = 32
    config.batch_size = 8
    config.num_train_steps = 250
    config.optimizer.learning_rate = 5e-5
    config.optimizer.warmup_fraction = 0.1
    config.log_every = 10
    config.checkpoint_every = 125
    config.eval_batch_size = 128
    config.evals.splits = ("train", "test")
    config.evals.max_train_passages = 2000
    config.evals.top_k = 16
    config.evals.store = "exact"
  return config
