r"""MVD: multi-view enhanced distillation (Liu et al., ACL 2023), in three stages.

Each entity is split into local views, `[CLS] title [ENT] chunk [SEP]` of at most 40 tokens
(sentences joined until a chunk has more than 5 tokens; zel_jax.data.local_views.view_features),
and kept whole as its global view. A mention's score for an entity is its best view's.

  # 1. Warm-up retriever: in-batch negatives over view-max scores (global + local views);
  #    evaluating on train writes the static candidates the teacher trains on.
  python -m zel_jax.train --config=configs/mvd.py:runlocal,stage=retriever --workdir=/tmp/mvd_r \
      --config.data.dir=data/foldoc "--config.evals.splits=('train','test')"
  # 2. Warm-up teacher: a multi-view cross-encoder on the retriever's static top-k (here
  #    started from a BLINK cross-encoder's workdir, e.g. quickstart --stage2's).
  python -m zel_jax.train --config=configs/mvd.py:runlocal,stage=teacher --workdir=/tmp/mvd_t \
      --config.data.dir=data/foldoc --config.mvd.candidates=/tmp/mvd_r \
      --config.init_from=workdirs/quickstart/cross "--config.evals.splits=()"
  # 3. MVD: joint training with cross- and self-alignment and dynamic hard negatives.
  python -m zel_jax.train --config=configs/mvd.py:runlocal,stage=joint --workdir=/tmp/mvd \
      --config.data.dir=data/foldoc --config.mvd.retriever=/tmp/mvd_r \
      --config.mvd.teacher=/tmp/mvd_t

The joint loss is L_de + L_ce + alpha * L_cross + beta * L_self (losses.mvd_alignment).
Evaluation (stages 1 and 3) searches a store of global and local views
(config.evals.views) and returns each entity once, at its best view.

Variants:
  runlocal      CPU, all-MiniLM-L6-v2, mention 32 tokens, 4 views of 32 in training, a
                global view of 32, 8 candidates sampled from the top 100; 200 warm-up
                steps of 32 mentions, 100 teacher and 100 joint steps of 4 mentions.
  variant=base  the paper's ZESHEL setting: bert-base-uncased, mention length 128, 10 views
                of 40 tokens in training (all at inference), global view 512; warm-up lr 1e-5,
                MVD lr 2e-5, candidates sampled 16 from the top 100.
The paper reports ZESHEL test recall@1/@64 of 52.51 / 91.55 for MVD and 41.99 / 89.23 for
its warm-up retriever (the authors' repository README; Table 1 of the paper).
"""

import ml_collections

from zel_jax.configs import blink_biencoder, common

STAGES = ("retriever", "teacher", "joint")


def get_config(arg=None):
  parsed = common.parse_arg(arg, variant="base", runlocal=False, stage="joint")
  if parsed.stage not in STAGES:
    raise ValueError(f"stage={parsed.stage!r}: one of {STAGES}")
  config = blink_biencoder.get_config(
      f"variant={parsed.variant}" + (",runlocal" if parsed.runlocal else ""))
  config.recipe = "mvd"
  config.trainer = "mvd"
  del config["loss"]
  del config["hard_negatives"]
  config.data.entity_length = 512   # The global view: the whole entity input.
  config.data.max_train_mentions = -1  # > 0: a fixed random subset (teacher and joint).

  config.mvd = ml_collections.ConfigDict()
  config.mvd.stage = parsed.stage
  config.mvd.view_length = 40       # Local views: [CLS] title [ENT] chunk [SEP].
  config.mvd.min_view_tokens = 5    # A chunk closes once it has more than this many tokens.
  config.mvd.train_views = 10       # The first views of an entity in training; all at search.
  # The global view is one of the entity's views (Eq. 3's max) in training as at search, so
  # the score searched with global+local views is the score trained. False: local views only
  # in training, the global view added at search untrained (Table 5's setting either way).
  config.mvd.train_global_view = True
  config.mvd.num_candidates = 16    # Per mention for the teacher and the joint stage.
  config.mvd.top_n = 100            # Dynamic negatives are sampled from the top-N entities.
  config.mvd.refresh_every = 0      # Steps between re-mining (0: once per epoch, as MVD).
  config.mvd.alpha = 0.3            # Cross-alignment weight.
  config.mvd.beta = 0.1             # Self-alignment weight.
  config.mvd.candidates = ""        # A retriever workdir (or file): static candidates.
  config.mvd.retriever = ""         # Joint stage: the warm-up retriever's workdir.
  config.mvd.teacher = ""           # Joint stage: the warm-up teacher's workdir.
  # Joint stage: the teacher's encoder where it differs from the student's model.pretrained
  # (an MPNet teacher for a MiniLM student); each reads its own tokenization.
  config.mvd.teacher_pretrained = ""
  # Ablations (the paper's Tables 3-4); all False is MVD.
  config.mvd.single_vector_teacher = False  # Teacher reads the global view only.
  config.mvd.no_relevant_view = False       # Student aligned at its own best view.
  config.mvd.no_self_alignment = False      # beta = 0.
  config.mvd.no_cross_alignment = False     # alpha = 0.
  config.mvd.no_dynamic_distillation = False  # Frozen teacher (static distillation).
  config.mvd.no_dynamic_negatives = False   # Candidates stay the static ones.

  config.optimizer.frozen = ()      # Set to ("teacher",) by no_dynamic_distillation.
  config.evals.views = "global+local"  # Or "local" or "global" (the ablation of Table 5).
  config.evals.type = ""            # The stage's: "teacher" for the teacher, else "retrieval".

  if parsed.stage == "retriever":
    config.optimizer.learning_rate = 1e-5
  else:
    config.optimizer.learning_rate = 2e-5
  if parsed.stage != "retriever":
    config.batch_size = 64 if parsed.stage == "joint" else 4
    config.num_epochs = 5 if parsed.stage == "joint" else 3
    config.data.one_world_per_batch = False
  config.eval_batch_size = 64

  if parsed.runlocal:
    config.data.entity_length = 32
    config.mvd.view_length = 32
    config.mvd.train_views = 4
    config.mvd.num_candidates = 8
    config.mvd.top_n = 100         # The paper's N; measured better than 32 (README).
    config.mvd.refresh_every = 50
    config.num_train_steps = {"retriever": 200, "teacher": 100, "joint": 100}[parsed.stage]
    config.eval_batch_size = 128
    if parsed.stage == "retriever":
      config.batch_size = 32
      config.optimizer.learning_rate = 5e-5
    else:
      config.data.max_train_mentions = 2000
      config.batch_size = 4
      config.optimizer.learning_rate = 5e-5 if parsed.stage == "teacher" else 2e-5
      config.eval_batch_size = 16 if parsed.stage == "teacher" else 128
  return config
