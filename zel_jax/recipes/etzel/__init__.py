"""ETZEL (Sui et al., 2022): ultra-fine entity typing as a hierarchical auxiliary task. Stages
(config.trainer): typing (the typing model, which also extracts each entity's types) and
etzel (the multi-task bi-encoder). See README.md here."""

from zel_jax.recipes.base import Recipe
from zel_jax.recipes.etzel import commands, multitask, typer

RECIPE = Recipe(
    name="etzel",
    trainers={"typing": typer.train_and_evaluate, "etzel": multitask.train_and_evaluate},
    evaluate=commands.evaluate,
    retriever=commands.load_retriever,
)
