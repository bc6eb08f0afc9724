r"""The hierarchical multi-task candidate generator of Sui et al. (COLING 2022), stage two:
BLINK's bi-encoder with entity typing as a low-level auxiliary task under linking.

  # After configs/etzel_typing.py has written DATA/types/<world>.json:
  python -m zel_jax.train --config=configs/etzel_multitask.py:runlocal --workdir=/tmp/etzel \
      --config.data.dir=data/foldoc
  python -m zel_jax.evaluate --workdir=/tmp/etzel --split=test     # recall@k, per category
  python -m zel_jax.train --config=configs/etzel_multitask.py:variant=base --workdir=$W \
      --config.data.dir=/data/zeshel --config.model.pretrained=/ckpt/bert-base-uncased

Per tower u = BERT(input); t = T1(u) (transformer layers over the example's tokens, padding
masked); f = T2((u + t) / 2); type logits from t[CLS]; score(m, e) = f_m . f_e + u_m . u_e.
Loss = in-batch softmax + mention_weight * BCE(mention types) + entity_weight * BCE(entity
types), both targets the gold entity's extracted types.

Variants: as configs/blink_biencoder.py (runlocal: MiniLM-L6, 32/32 tokens, 200 steps of 32;
base: bert-base-uncased, 128/128, batch 128, lr 1e-5, 5 epochs). The paper's ZESHEL results
are its Table 2 (recall@k against BLINK's bi-encoder, whose recall@64 is 82.06) and Table 3
(per mention category).
"""

import ml_collections

from zel_jax.configs import blink_biencoder, etzel_typing


def get_config(arg=None):
  config = blink_biencoder.get_config(arg)
  config.recipe = "etzel"
  config.trainer = "etzel"  # zel_jax/recipes/etzel/multitask.py
  del config["loss"]                # In-batch negatives only, as the paper trains.
  del config["hard_negatives"]

  config.typing = ml_collections.ConfigDict()
  config.typing.vocabulary = etzel_typing.default_vocabulary()
  config.typing.types_dir = ""      # Extracted types; empty: DATA/types (stage one's output).
  config.typing.max_labels = 32     # Types kept per entity (the extracted ones, in order).
  config.typing.typing_layers = 1   # T1's depth.
  config.typing.linking_layers = 1  # T2's depth.
  config.typing.layers_init = "top_layer"  # T1 and T2 start as copies of the tower's last
                                    # layer; "random" as the reference code's fresh layers.
  config.typing.mention_weight = 1.0
  config.typing.entity_weight = 1.0
  return config
