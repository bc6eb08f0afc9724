r"""EntQA reader (Zhang, Hua and Stratos, ICLR 2022, Sec. 2.2-2.3): finds each retrieved
entity's mentions in a passage; with its retriever, links raw documents end to end.

  python -m zel_jax.train --config=configs/entqa_reader.py:runlocal --workdir=/tmp/eq_read \
      --config.data.dir=data/foldoc --config.data.candidates=/tmp/eq_ret \
      --config.data.documents=dictd_split
  python -m zel_jax.evaluate --end-to-end --workdir=/tmp/eq_read --split=test
  python -m zel_jax.train --config=configs/entqa_reader.py:variant=base --workdir=$W_READ \
      --config.data.dir=/data/zeshel --config.data.candidates=$W_RET \
      --config.model.pretrained=/ckpt/bert-base-uncased

data.candidates is the retriever's workdir: its evaluation wrote candidates/passages_<split>
.jsonl, and its config fixes passages and topics. After training the reader picks the
threshold gamma on evals.calibrate_split (written to W/threshold.json, which evaluate and
link then use) and reports end-to-end InKB micro P/R/F1 on evals.splits.

Variants:
  runlocal      CPU, all-MiniLM-L6-v2, entities of 32 tokens, 8 candidates per passage,
                900 steps of 4 passages (32 rows of 75 tokens) at lr 1e-4; gamma from 150
                val documents, then test (about 40 minutes on 2 cores, test reading
                included).
  variant=base  the paper's reader setting with bert-base (the paper's reader is ELECTRA-large
                fine-tuned on SQuAD 2.0, which has no checkpoint in this stack's formats here):
                K = 64 candidates in training and 100 at test, entities of 128 tokens, at most
                3 spans per candidate, gamma 0.05, lr 1e-5 with 6% warm-up, 4 epochs of 8
                passages (the authors: 2 per GPU x 2 accumulation x 2 GPUs).
EntQA reports InKB micro F1 (GERBIL, strong matching) of 85.8 on AIDA test, 72.1 on MSNBC,
54.1 on N3-Reuters-128 and 41.9 on N3-RSS-500; end-to-end on FOLDOC here is in README.md.
"""

import ml_collections

from zel_jax.configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="base", runlocal=False)
  config = ml_collections.ConfigDict()
  config.recipe = "entqa"
  config.trainer = "entqa_reader"
  config.seed = 0

  # Input.
  config.data = ml_collections.ConfigDict()
  config.data.dir = ""              # A ZESHEL-layout directory (documents/, mentions/).
  config.data.candidates = ""       # The EntQA retriever's workdir.
  config.data.documents = "mentions"  # Evaluation documents: those with mentions in the
                                      # split, or "dictd_split" (gold-less ones included).
  config.data.entity_length = 128
  config.data.num_candidates = 64   # K per training passage (golds put in where missed).
  config.data.null_passages = 0.2   # Gold-less passages per gold passage in training.
  config.data.max_train_passages = -1
  config.data.use_unused_markers = True

  # Model.
  config.model = common.encoder(
      {"base": "bert-base-uncased", "large": "bert-large-uncased"}.get(arg.variant,
                                                                       arg.variant))

  # Inference (Sec. 2.3).
  config.reader = ml_collections.ConfigDict()
  config.reader.top_k = 100         # Candidates per passage at test time.
  config.reader.top_p = 3           # Spans per candidate, none less probable than null.
  config.reader.threshold = 0.05    # gamma, unless W/threshold.json was calibrated.
  config.reader.max_span_tokens = 16
  config.reader.nested = False      # Keep spans nested inside another of the same entity.
  config.reader.one_entity_per_span = True

  # Optimizer.
  config.batch_size = 8             # Passages per step (x num_candidates rows).
  config.grad_accum_steps = 1
  config.num_epochs = 4
  config.num_train_steps = -1
  config.optimizer = common.optimizer(learning_rate=1e-5, warmup_fraction=0.06)

  common.checkpoints(config, log_every=50, checkpoint_every=500, keep=3)
  config.init_from = ""

  common.mesh_and_sharding(config, mesh=[("data", -1), ("fsdp", 1)])
  config.eval_batch_size = 16       # Passages per inference batch (x reader.top_k rows).

  # Evaluation after training.
  config.evals = common.evals("end_to_end", splits=("val", "test"))
  config.evals.calibrate_split = "val"   # "" keeps reader.threshold.
  config.evals.calibrate_documents = -1  # > 0: a fixed subset of that split's documents.

  if arg.runlocal:
    config.model = common.encoder("all-MiniLM-L6-v2")
    config.data.entity_length = 32
    config.data.num_candidates = 8
    config.reader.top_k = 8
    config.batch_size = 4
    # 300 steps at 5e-5 left every span under its null span (val F1 2.7): a fresh span head
    # needs the longer, faster schedule.
    config.num_train_steps = 900
    config.optimizer.learning_rate = 1e-4
    config.optimizer.warmup_fraction = 0.1
    config.log_every = 10
    config.checkpoint_every = 100
    config.eval_batch_size = 32
    config.evals.splits = ("test",)
    config.evals.calibrate_documents = 150
  return config
