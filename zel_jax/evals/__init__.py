"""The evaluation library every recipe shares (layer 2): metrics, batched inference on the
mesh, retrieval over candidate stores and the evaluator interface."""
