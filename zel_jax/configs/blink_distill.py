r"""BLINK knowledge distillation (Wu et al., 2020, Sec. 5.4): a bi-encoder student learns the
cross-encoder teacher's distribution over each mention's retrieved candidates.

  python -m zel_jax.train --config=configs/blink_distill.py:runlocal --workdir=/tmp/distill \
      --config.data.dir=data/foldoc --config.data.candidates=/tmp/bi \
      --config.distill.teacher=/tmp/cross --config.init_from=/tmp/bi

The loss per mention is (1 - weight) * CE(student, gold) + weight * KL(teacher_T || student_T)
over its K candidates, softmax temperature T on both sides. weight=0 trains on the same
candidates with the gold loss alone: the control that separates the teacher's contribution
from the hard candidates'.
Variants as configs/blink_biencoder.py (runlocal, base, large); the student's input lengths,
pooling and towers are the bi-encoder's, and the workdir evaluates and links as one.
"""

import ml_collections

from zel_jax.configs import blink_biencoder, common


def get_config(arg=None):
  parsed = common.parse_arg(arg, variant="base", runlocal=False)
  config = blink_biencoder.get_config(arg)
  config.trainer = "distill"
  del config["loss"]
  del config["hard_negatives"]
  config.data.candidates = ""        # The retriever's workdir (or candidates file), train split.
  config.data.num_candidates = 64    # Candidates per mention the teacher scores.
  config.data.max_train_mentions = -1  # > 0: a fixed random subset of the training split.
  config.data.one_world_per_batch = False  # Negatives are each mention's own candidates.

  config.distill = ml_collections.ConfigDict()
  config.distill.teacher = ""        # A cross-encoder workdir (configs/blink_crossencoder.py).
  config.distill.weight = 0.5        # Of the KL term; 1 - weight on the gold cross-entropy.
  config.distill.temperature = 2.0

  config.batch_size = 32
  config.num_epochs = 1
  if parsed.runlocal:
    config.data.num_candidates = 8
    config.data.max_train_mentions = 2000
    config.batch_size = 8
    config.num_train_steps = 200
    config.optimizer.learning_rate = 2e-5
    config.optimizer.warmup_fraction = 0.0
  return config
