"""Cross-language entity linking (Schumacher et al., 2021): a ranker over a frozen
multilingual encoder's features, NIL by a threshold picked on dev, zero-shot to languages
unseen in training. One stage (config.trainer "xel"). See README.md here."""

from zel_jax.recipes.base import Recipe
from zel_jax.recipes.xel import trainer

RECIPE = Recipe(name="xel", trainers={"xel": trainer.train_and_evaluate},
                evaluate=trainer.evaluate)
