"""EntQA (Zhang, Hua and Stratos, ICLR 2022): entity linking as inverted question answering.
Stages (config.trainer): entqa_retriever (a passage's entities, before any mention is
found) and entqa_reader (each candidate's mentions in the passage); whole documents are
linked end to end. See README.md here."""

from zel_jax.recipes.base import Recipe
from zel_jax.recipes.entqa import commands, exported, reader_trainer, retriever

RECIPE = Recipe(
    name="entqa",
    trainers={"entqa_retriever": retriever.train_and_evaluate,
              "entqa_reader": reader_trainer.train_and_evaluate},
    evaluate=commands.evaluate,
    retriever=commands.load_retriever,
    documents=commands.document_linker,
    export_documents=exported.write_reader,
)
