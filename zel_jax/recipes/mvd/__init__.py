"""MVD: multi-view enhanced distillation (Liu et al., ACL 2023). Stages (config.mvd.stage,
one trainer): a multi-view retriever warmed up with in-batch negatives, a multi-view
cross-encoder teacher, and both trained jointly. See README.md here."""

from zel_jax.recipes.base import Recipe
from zel_jax.recipes.mvd import evaluators, trainer

RECIPE = Recipe(
    name="mvd",
    trainers={"mvd": trainer.train_and_evaluate},
    evaluate=evaluators.evaluate,
    retriever=evaluators.load_retriever,
    step_shapes=trainer.step_shapes,
)
