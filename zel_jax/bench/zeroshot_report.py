"""The zero-shot benchmark's report: docs/benchmark.md (data card and tables), the JSON of
every number, and a recall@k plot; everything here is computed from the jobs' reports."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import statistics
from typing import Any

from zel_jax.data import zeshel

KS = (1, 4, 16, 64)
CURVE_KS = (1, 2, 4, 8, 16, 32, 50, 64, 100)
# Row label -> (job name prefix, what it is); retrieval rows in table order.
RETRIEVAL_ROWS = (
    ("BM25", "bm25", "BM25 over title + text, the mention as query"),
    ("untrained MiniLM", "untrained", "all-MiniLM-L6-v2 before training, mean pooled"),
    ("BLINK bi-encoder", "blink", "in-batch negatives, one world per batch"),
    ("+ hard negatives", "hard", "BLINK, then its own top candidates as hard negatives"),
    ("ETZEL multi-task", "etzel", "bi-encoder + ultra-fine typing heads, typing stage first"),
    ("MVD", "mvd", "joint distillation from a multi-view teacher; global + local views"),
    ("distilled bi-encoder", "distill", "BLINK student, cross-encoder teacher (KL + gold)"),
    ("gold-only control", "gold_only", "the same student and candidates, gold loss alone"),
    ("untrained MPNet", "untrained_mpnet",
     "all-mpnet-base-v2 (110M) before training, mean pooled as the checkpoint pools"),
    ("MPNet bi-encoder", "mpnet_blink", "BLINK's bi-encoder on all-mpnet-base-v2"),
    ("distilled from MPNet", "distill_mpnet",
     "BLINK MiniLM student, MPNet cross-encoder teacher (control: gold-only)"),
    ("MVD, MPNet teacher", "mvd_mpnet",
     "MVD's joint stage: MiniLM student, MPNet multi-view teacher"),
)
# Cross-encoders reranking the BLINK bi-encoder's candidates: (label, job name prefix).
CROSS_ROWS = (("MiniLM-L6", "cross"), ("MPNet", "cross_mpnet"))


def _runs(results: dict[str, Any], prefix: str) -> list[tuple[str, dict[str, Any]]]:
  """(seed label, job result) of a row: `prefix` alone or `prefix.sN` for each seed."""
  if prefix in results:
    return [("-", results[prefix])]
  return sorted((name.split(".", 1)[1], r) for name, r in results.items()
                if name.startswith(prefix + ".s") and name.count(".") == 1)


def _get(report: dict[str, Any], *path: str) -> float | None:
  node: Any = report
  for key in path:
    if not isinstance(node, dict) or key not in node:
      return None
    node = node[key]
  return node


def _fmt(values: list[float | None]) -> str:
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  if len(values) == 1:
    return f"{values[0]:.2f}"
  return f"{statistics.mean(values):.2f} ({' / '.join(f'{v:.2f}' for v in values)})"


def _mean(values: list[float | None]) -> float | None:
  values = [v for v in values if v is not None]
  return statistics.mean(values) if values else None


def recall(results: dict[str, Any], prefix: str, split: str, k: int, where: str = "macro",
           world: str | None = None) -> list[float | None]:
  """Recall@k of every seed of a row: macro, micro, or of one world / category."""
  out = []
  for _, result in _runs(results, prefix):
    report = result["reports"].get(split, {})
    if where == "macro":
      out.append(_get(report, "macro", f"recall@{k}"))
    elif where == "micro":
      out.append(_get(report, f"recall@{k}"))
    else:
      out.append(_get(report, where, world, f"recall@{k}"))
  return out


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def data_card(summary: dict[str, Any], results: dict[str, Any]) -> list[str]:
  """One row per world: sizes, categories, dropped links, BM25 and untrained recall."""
  header = ["world", "split", "entities", "mentions (kept / linked)", "mean entity tokens",
            "HIGH_OVERLAP", "MULTIPLE_CAT.", "AMBIG._SUBSTRING", "LOW_OVERLAP",
            "links dropped (unresolved / self / other)", "BM25 R@1 / R@64",
            "untrained R@1 / R@64"]
  rows = []
  for world, w in summary["worlds"].items():
    split, dropped = w["split"], w["links_dropped"]
    shares = [f"{100 * w['category_share'][c]:.1f}%" for c in zeshel.CATEGORIES]
    baselines = []
    for prefix in ("bm25", "untrained"):
      r1 = _mean(recall(results, prefix, split, 1, "per_world", world))
      r64 = _mean(recall(results, prefix, split, 64, "per_world", world))
      baselines.append("-" if r1 is None else f"{r1:.2f} / {r64:.2f}")
    rows.append([world, split, f"{w['entities']:,}", f"{w['mentions_kept']:,} / "
                 f"{w['mentions']:,}", f"{w['mean_entity_tokens']:.1f}", *shares,
                 f"{dropped['unresolved']:,} / {dropped['to_self']:,} / "
                 f"{dropped['empty_anchor'] + dropped['overlapping']:,}", *baselines])
  return _table(header, rows)


def step_seconds(result: dict[str, Any]) -> float | None:
  """A training job's median seconds per step: as recorded in the report that first had the
  result, else from its workdir's metrics.jsonl; None for other jobs."""
  # Only training jobs own their workdir's metrics (an evaluate job reads another's).
  if "zel_jax.train" not in result.get("command", ""):
    return None
  if "step_seconds" in result:  # Measured when the result was new, maybe on another machine.
    return result["step_seconds"]
  path = os.path.join(result.get("workdir", ""), "metrics.jsonl")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    rates = [row["steps_per_s"] for row in map(json.loads, filter(str.strip, f))
             if row.get("steps_per_s")]
  return round(1 / statistics.median(rates), 3) if rates else None


def _seconds(results: dict[str, Any], prefix: str) -> float:
  return sum(r.get("seconds", 0.0) for name, r in results.items()
             if name == prefix or name.startswith(prefix + "."))


def results_tables(results: dict[str, Any], test_worlds: list[str]) -> list[str]:
  lines = ["### Retrieval, test worlds (recall %, macro over worlds = ZESHEL's headline)", "",
           "Mean over seeds, each seed in parentheses."]
  sizes = {_get(r["reports"].get("test", {}), "per_world", w, "mentions")
           for r in results.values() for w in test_worlds} - {None}
  if len(sizes) == 1:
    lines[-1] += (f" Every test world has {sizes.pop():,} mentions, so micro recall equals "
                  "macro.")
  lines.append("")
  header = ["row", *(f"macro R@{k}" for k in KS), *(f"micro R@{k}" for k in KS), "seeds"]
  rows = []
  for label, prefix, _ in RETRIEVAL_ROWS:
    runs = _runs(results, prefix)
    if not runs:
      continue
    rows.append([label, *(_fmt(recall(results, prefix, "test", k)) for k in KS),
                 *(_fmt(recall(results, prefix, "test", k, "micro")) for k in KS),
                 str(len(runs))])
  lines += _table(header, rows) + [""]

  lines += ["### Per test world (R@1 / R@64, mean over seeds)", ""]
  rows = []
  for label, prefix, _ in RETRIEVAL_ROWS:
    if not _runs(results, prefix):
      continue
    cells = []
    for world in test_worlds:
      r1 = _mean(recall(results, prefix, "test", 1, "per_world", world))
      r64 = _mean(recall(results, prefix, "test", 64, "per_world", world))
      cells.append("-" if r1 is None else f"{r1:.2f} / {r64:.2f}")
    rows.append([label, *cells])
  lines += _table(["row", *test_worlds], rows) + [""]

  lines += ["### Per category, test (micro R@1 / R@64, mean over seeds; mentions)", ""]
  counts = {c: _get(_runs(results, "bm25")[0][1]["reports"].get("test", {}), "per_category",
                    c, "mentions") if _runs(results, "bm25") else None
            for c in zeshel.CATEGORIES}
  rows = []
  for label, prefix, _ in RETRIEVAL_ROWS:
    if not _runs(results, prefix):
      continue
    cells = []
    for category in zeshel.CATEGORIES:
      r1 = _mean(recall(results, prefix, "test", 1, "per_category", category))
      r64 = _mean(recall(results, prefix, "test", 64, "per_category", category))
      cells.append("-" if r1 is None else f"{r1:.2f} / {r64:.2f}")
    rows.append([label, *cells])
  lines += _table(["row", *(f"{c} ({counts[c] or 0})" for c in zeshel.CATEGORIES)], rows)
  lines += [""]

  lines += ["### Cross-encoder reranking the BLINK bi-encoder's candidates, test "
            "(accuracy %, as BLINK reports)", ""]
  rows = []
  for encoder, prefix in CROSS_ROWS:
    for seed, result in _runs(results, prefix):
      report = result["reports"].get("test", {})
      rows.append([encoder, seed, *(f"{_get(report, 'macro', key):.2f}"
                                    if _get(report, "macro", key) is not None else "-"
                                    for key in ("normalized_accuracy", "unnormalized_accuracy",
                                                "candidate_recall", "retriever_accuracy")),
                   f"{report.get('unnormalized_accuracy', float('nan')):.2f}"])
  lines += _table(["encoder", "seed", "macro normalized", "macro unnormalized",
                   "macro candidate recall", "macro bi-encoder R@1 on the same lists",
                   "micro unnormalized"], rows)
  lines += [""]

  # The MPNet rows are measured on the test worlds only (see zeroshot.mpnet_jobs).
  lines += ["### Validation worlds (tuning only; macro R@1 / R@64)", ""]
  rows = [[label, f"{_fmt(recall(results, prefix, 'val', 1))} / "
           f"{_fmt(recall(results, prefix, 'val', 64))}"]
          for label, prefix, _ in RETRIEVAL_ROWS
          if any(v is not None for v in recall(results, prefix, "val", 1))]
  lines += _table(["row", "val macro R@1 / R@64"], rows) + [""]
  return lines


def _per_seed(results: dict[str, Any], chain: list[tuple[str, int]]) -> dict[str, list[float]]:
  """Test macro recall of each row in `chain`, per seed; rows without seeds (BM25, untrained)
  stand in every seed. Only seeds every seeded row has are kept."""
  by_row = [{seed: _get(r["reports"].get("test", {}), "macro", f"recall@{k}")
             for seed, r in _runs(results, prefix)} for prefix, k in chain]
  seeds = sorted(set.intersection(*(set(row) for row in by_row if "-" not in row)) or {"-"})
  return {seed: [row.get(seed, row.get("-")) for row in by_row] for seed in seeds
          if all(row.get(seed, row.get("-")) is not None for row in by_row)}


def _verdict(values: list[float], at_least: bool) -> bool:
  return all(a > b for a, b in zip(values, values[1:])) or (at_least and values[0] >= values[1])


def orderings(results: dict[str, Any]) -> list[str]:
  """The papers' orderings, each checked on the test macro numbers: on the means over seeds,
  and in each seed alone, since an ordering that flips between seeds is not claimed."""
  def m(prefix: str, k: int) -> float | None:
    return _mean(recall(results, prefix, "test", k))

  checks = [
      ("trained (BLINK) > untrained > BM25, R@64", [("blink", 64), ("untrained", 64),
                                                     ("bm25", 64)]),
      ("MVD > BLINK, R@1", [("mvd", 1), ("blink", 1)]),
      ("MVD > BLINK, R@64", [("mvd", 64), ("blink", 64)]),
      ("ETZEL multi-task >= BLINK, R@64", [("etzel", 64), ("blink", 64)]),
      ("distilled > gold-only control, R@1", [("distill", 1), ("gold_only", 1)]),
      ("distilled > gold-only control, R@64", [("distill", 64), ("gold_only", 64)]),
      ("MPNet bi-encoder > MiniLM bi-encoder, R@1", [("mpnet_blink", 1), ("blink", 1)]),
      ("distilled from MPNet > gold-only control, R@1", [("distill_mpnet", 1),
                                                         ("gold_only", 1)]),
      ("distilled from MPNet > gold-only control, R@64", [("distill_mpnet", 64),
                                                          ("gold_only", 64)]),
      ("MVD with the MPNet teacher > MVD with the MiniLM teacher, R@1", [("mvd_mpnet", 1),
                                                                       ("mvd", 1)]),
  ]
  lines = []
  for text, chain in checks:
    values = [m(prefix, k) for prefix, k in chain]
    if any(v is None for v in values):
      lines.append(f"- {text}: not measured")
      continue
    holds = _verdict(values, ">=" in text)
    shown = " vs ".join(f"{p} {v:.2f}" for (p, _), v in zip(chain, values))
    seeds = _per_seed(results, chain)
    if len(seeds) > 1:
      shown += "; " + ", ".join(
          f"{seed} {'holds' if _verdict(v, '>=' in text) else 'not'}" for seed, v in seeds.items())
    lines.append(f"- {text}: **{'holds' if holds else 'does not hold'}** ({shown})")
  lines += _reranker_above(results, "cross", "blink",
                           "cross-encoder > bi-encoder, accuracy@1")
  lines += _reranker_above(results, "cross_mpnet", "distill_mpnet",
                           "MPNet teacher > its distilled MiniLM student, accuracy@1")
  return lines


def _reranker_above(results: dict[str, Any], cross: str, retriever: str, text: str
                    ) -> list[str]:
  """A cross-encoder's macro unnormalized accuracy (the first candidate after reranking)
  against a retriever's macro R@1, on the means and per seed; a cross-encoder with one seed
  stands in every seed of the retriever."""
  scores = {seed: _get(r["reports"].get("test", {}), "macro", "unnormalized_accuracy")
            for seed, r in _runs(results, cross)}
  r1 = {seed: _get(r["reports"].get("test", {}), "macro", "recall@1")
        for seed, r in _runs(results, retriever)}
  if not scores or not r1 or None in scores.values() or None in r1.values():
    return []
  mean_cross, mean_r1 = _mean(list(scores.values())), _mean(list(r1.values()))
  verdict = "holds" if mean_cross > mean_r1 else "does not hold"
  shown = f"{cross} macro unnormalized {mean_cross:.2f} vs {retriever} R@1 {mean_r1:.2f}"
  only = next(iter(scores.values())) if len(scores) == 1 else None
  paired = {seed: scores.get(seed, only) for seed in r1 if scores.get(seed, only) is not None}
  if len(paired) > 1:
    shown += "; " + ", ".join(
        f"{seed} {'holds' if paired[seed] > r1[seed] else 'not'}" for seed in paired)
  return [f"- {text}: **{verdict}** ({shown})"]


def plot(results: dict[str, Any], path: str) -> None:
  """Macro recall@k over the test worlds, one curve per row (mean over seeds)."""
  import matplotlib  # lazy: matplotlib draws the plot only (bench/test extras)
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # lazy: matplotlib draws the plot only
  figure, axis = plt.subplots(figsize=(7, 4.5))
  drawn = 0
  for label, prefix, _ in RETRIEVAL_ROWS:
    if not _runs(results, prefix):
      continue
    curve = [_mean(recall(results, prefix, "test", k)) for k in CURVE_KS]
    if None not in curve:
      # The color cycle has 10 colors: past the 10th curve, another line and marker.
      style = drawn // 10 % 3
      axis.plot(CURVE_KS, curve, linestyle=("-", "--", ":")[style], marker="osD"[style],
                label=label)
      drawn += 1
  axis.set_xscale("log")
  axis.set_xticks(CURVE_KS, [str(k) for k in CURVE_KS])
  axis.set_xlabel("k")
  axis.set_ylabel("macro recall@k over test worlds (%)")
  axis.set_title("Zero-shot test worlds: python3.11-doc, rust-doc, apache2-doc")
  axis.grid(alpha=0.3)
  axis.legend(fontsize=8)
  figure.tight_layout()
  temporary = path + ".tmp.png"
  figure.savefig(temporary, dpi=110)
  os.replace(temporary, path)
  plt.close(figure)


def write(docs_dir: str, summary: dict[str, Any], results: dict[str, Any], budget,
          seeds: list[int], command: str, test_worlds: list[str],
          planned: list[str] | None = None) -> dict[str, str]:
  """docs/benchmark.md, docs/benchmark.json and docs/benchmark_recall.png."""
  os.makedirs(docs_dir, exist_ok=True)
  paths = {name: os.path.join(docs_dir, name) for name in
           ("benchmark.md", "benchmark.json", "benchmark_recall.png")}
  # Step times go into the JSON: a report written on another machine reuses these results.
  results = {name: {**r, "step_seconds": step_seconds(r)} for name, r in results.items()}
  record = {"command": command, "date": datetime.date.today().isoformat(),
            "budget": dataclasses.asdict(budget), "seeds": seeds, "data": summary,
            "results": results}
  zeshel.write_json(paths["benchmark.json"], record)
  plot(results, paths["benchmark_recall.png"])

  hours = sum(r.get("seconds", 0.0) for r in results.values()) / 3600
  lines = ["# The zero-shot benchmark", "",
           "Generated by `" + command + "` (do not edit by hand; rerun the command).", "",
           "Worlds are Debian documentation packages, split by world as ZESHEL is: 8 train "
           "worlds, 3 val worlds for tuning, 3 test worlds whose entities no model saw. Built "
           "by `python -m zel_jax.data.worlds --out=data/worlds` (see docs/worlds.md).", "",
           "## Data card", ""]
  lines += data_card(summary, results)
  missing = [name for name in planned or [] if name not in results]
  if missing:
    lines[2:2] = [f"**Partial**: {len(results)} of {len(planned)} jobs have finished; rows and "
                  f"seeds still to come: {', '.join(missing)}. Rerunning the command resumes "
                  "them.", ""]
  lines += ["", "Category shares are of the kept mentions; BM25 and untrained recall are on "
            "each world's own split. Links dropped: to nothing in the world, to the page "
            "itself, or with an empty or overlapping anchor.", "", "## Results", "",
            f"Budget (2-core CPU, all-MiniLM-L6-v2, {budget.length}-token mentions and "
            f"entities): bi-encoder rows {budget.steps} steps of {budget.batch} at lr "
            f"{budget.learning_rate:g}; hard negatives +{budget.hard_steps} steps; cross-encoder "
            f"{budget.cross_steps} steps of 4 mentions x {budget.candidates} candidates; "
            f"distilled and gold-only students +{budget.distill_steps} steps of 8 mentions x "
            f"{budget.candidates}; ETZEL typing stage {budget.typing_steps} steps, then the "
            f"bi-encoder budget; MVD: warm-up at the bi-encoder budget, teacher "
            f"{budget.mvd_teacher_steps} steps from the cross-encoder, joint "
            f"{budget.mvd_joint_steps} steps of 4 mentions, negatives "
            + ("re-mined over every view" if budget.mvd_dynamic_negatives else
               f"drawn from the warm-up retriever's top {budget.hard_top} (less than one "
               "epoch: MVD's per-epoch re-mining would draw once, from that retriever)")
            + f". Base-size rows (all-mpnet-base-v2, 110M parameters, same shapes): "
            f"bi-encoder {budget.mpnet_steps} steps of {budget.batch}; cross-encoder (the "
            f"teacher of the MiniLM students of every seed) {budget.mpnet_cross_steps} steps "
            f"of 4 mentions x {budget.candidates} from seed {seeds[0]}'s BLINK candidates; "
            f"MVD teacher {budget.mpnet_mvd_teacher_steps} steps from it, joint "
            f"{budget.mpnet_mvd_joint_steps} steps; measured on the test worlds only, one seed "
            f"except the students. Seeds: {', '.join(map(str, seeds))}. Total wall "
            f"time of all jobs: {hours:.1f} h.", ""]
  lines += results_tables(results, test_worlds)
  lines += ["## The papers' orderings on the test worlds", ""] + orderings(results) + [""]
  lines += ["![recall@k](benchmark_recall.png)", "", "## Jobs", ""]
  lines += ["Minutes are the wall time of the run that finished the job (a resumed job's "
            "earlier runs are not counted); s/step is the median over its logged steps.", ""]
  rows = [[name, f"{r.get('seconds', 0) / 60:.1f}",
           "-" if r["step_seconds"] is None else f"{r['step_seconds']:.2f}",
           f"`{r.get('command', '')}`"] for name, r in results.items()]
  lines += _table(["job", "minutes", "s/step", "command"], rows) + [""]
  with open(paths["benchmark.md"] + ".tmp", "w") as f:
    f.write("\n".join(lines))
  os.replace(paths["benchmark.md"] + ".tmp", paths["benchmark.md"])
  return paths
