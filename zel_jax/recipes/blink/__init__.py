"""BLINK (Wu et al., 2020): a bi-encoder trained with in-batch (or mined hard) negatives, a
cross-encoder reranking its candidates, and the cross-encoder distilled into a bi-encoder.
Stages (config.trainer): biencoder, crossencoder, distill. See README.md here."""

from zel_jax.recipes.base import Recipe
from zel_jax.recipes.blink import biencoder, commands, crossencoder, distill

RECIPE = Recipe(
    name="blink",
    trainers={"biencoder": biencoder.train_and_evaluate,
              "crossencoder": crossencoder.train_and_evaluate,
              "distill": distill.train_and_evaluate},
    evaluate=commands.evaluate,
    retriever=commands.load_bi_retriever,
    step_shapes=biencoder.step_shapes,
    reranker=commands.Reranker,
)
