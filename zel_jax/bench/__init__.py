"""Benchmarks, each printing one JSON object as its last stdout line (`__main__.py` is the
command line; index.py, steps.py and memory.py hold the measurements).

  python -m zel_jax.bench index [--sizes=100000,1000000] [--dim=384] [--queries=2000]
  python -m zel_jax.bench train [--batch_size=32 --mention_length=128 --entity_length=128]
  python -m zel_jax.bench encode [--data=data/foldoc --world=foldoc --encode_length=128]
  python -m zel_jax.bench rerank [--data=data/foldoc --rerank_mentions=256 --rerank_k=16]
  python -m zel_jax.bench mvd [--mvd_variant=runlocal --mvd_batch_size=4 --mvd_dtype=float32
                              --mvd_remat=]

train: pairs/s of the jitted bi-encoder update (--model: MiniLM-L6 by default, or
all-mpnet-base-v2; two towers, in-batch loss, AdamW, clipping) against the same model and
batch in PyTorch (transformers' BertModel or MPNetModel) in the same run, the step's FLOP/s
(XLA's cost analysis) as a fraction of a plain jitted matmul's, and the process's peak
resident memory after the zel_jax steps and after both.
encode: the whole knowledge-base embedding pass of a world (tokenize, batch, encode; rows
sorted by length and cut to 8-token buckets) against BLINK's pass that pads every entity to
the maximum length, in entities/s; the two alternate over quarters of the world.
rerank: cross-encoder scoring of real FOLDOC test mentions, each against k entities of its
world, at BLINK's lengths (128 + 128 -> 255-token pairs): zel_jax's length-bucketed pass
(score_candidates) against BLINK's PyTorch pass that pads every pair to 256 tokens, in
candidates/s, same encoder (MiniLM-L6 + a linear score on [CLS]).
mvd: seconds per MVD joint update (student over K candidates x S local views + the global view,
multi-view teacher over the local pairs) against a BLINK bi-encoder update, same encoder and
mentions per step.

index: candidate stores on clustered synthetic embeddings (see `clustered_embeddings`). For
each size, exact brute force (numpy BLAS matmul + argpartition) gives the ground truth and the
queries/s baseline; ScaNN, FAISS HNSW, FAISS flat and the DeviceStore are measured against it.
The approximate stores are tuned on a separate set of queries (ScaNN: the fastest
leaves-to-search / reordering setting reaching --target_recall + --tune_margin; HNSW: the
smallest efSearch reaching ScaNN's tuned recall, i.e. equal recall), then timed on the
evaluation queries with batched calls (the fastest of repeated calls counts). Output: {"rows": [{store, n, build_s, qps, recall_at_64_vs_exact,
params, ...}, ...]}.
"""
