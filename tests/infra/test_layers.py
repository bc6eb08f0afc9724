"""The floor plan (docs/layout.md): zel_jax's imports run only downward through its
layers, with no cycle, counting imports made inside functions and under TYPE_CHECKING; an
import inside a function is kept only for an optional or heavy dependency, with its reason.

  L0 infrastructure  sharding, checkpoint, checksums, optim, losses, metric_writer, workdir_io,
                     configs
  L1 shared pieces   models, data, index
  L2 libraries       evals (metrics, inference, retrieval, linking), training (loop, params)
  L3 recipes         recipes.<name> (each imports itself, recipes.base and BLINK only)
  L4 entry points    train, evaluate, link, encode, quickstart, bench, weights, export (nothing
                     imports them)
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2] / "zel_jax"
ENTRY_POINTS = {"train", "evaluate", "link", "encode", "quickstart", "bench", "weights",
                "export"}
LAYERS = {"sharding": 0, "checkpoint": 0, "optim": 0, "losses": 0, "metric_writer": 0,
          "workdir_io": 0, "checksums": 0, "configs": 0, "models": 1, "data": 1, "index": 1, "evals": 2,
          "training": 2, "recipes": 3, **{name: 4 for name in ENTRY_POINTS}}


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in ROOT.rglob("*.py"):
    parts = ("zel_jax",) + path.relative_to(ROOT).with_suffix("").parts
    out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return out


MODULES = _modules()


def _layer(module: str) -> int:
  parts = module.split(".")
  if len(parts) == 1:
    return 0  # The package itself.
  return LAYERS[parts[1]]


def _resolve(node: ast.AST, module: str, is_package: bool) -> list[str]:
  """The zel_jax modules an import statement imports."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names if a.name.split(".")[0] == "zel_jax"]
  base = node.module or ""
  if node.level:
    package = module if is_package else module.rsplit(".", 1)[0]
    for _ in range(node.level - 1):
      package = package.rsplit(".", 1)[0]
    base = f"{package}.{base}" if base else package
  if base.split(".")[0] != "zel_jax":
    return []
  out = []
  for alias in node.names:
    full = f"{base}.{alias.name}"
    out.append(full if full in MODULES else base)
  return out


def _imports():
  """(importer, imported, line, inside a function, reason comment) for every import."""
  for module, path in MODULES.items():
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    functions = [n for n in ast.walk(tree)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    inner = {id(n) for f in functions for n in ast.walk(f)
             if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
      if not isinstance(node, (ast.Import, ast.ImportFrom)):
        continue
      reason = "# lazy:" in lines[node.lineno - 1]
      targets = _resolve(node, module, path.name == "__init__.py")
      if id(node) in inner:
        yield module, targets or [None], node.lineno, True, reason
      else:
        yield module, targets, node.lineno, False, reason


def test_every_module_has_a_layer():
  assert sorted({m.split(".")[1] for m in MODULES if "." in m} - set(LAYERS)) == []


def test_imports_run_only_downward():
  upward = []
  for module, targets, line, _, _ in _imports():
    for target in targets:
      if target is None or target == module:
        continue
      if _layer(target) > _layer(module):
        upward.append(f"{module}:{line} imports {target}")
  assert upward == []


def test_nothing_imports_an_entry_point():
  found = []
  for module, targets, line, _, _ in _imports():
    for target in targets:
      if target is None or _layer(target) != 4:
        continue
      own_bench = module.startswith("zel_jax.bench") and target.startswith("zel_jax.bench")
      if not own_bench and target != module:
        found.append(f"{module}:{line} imports {target}")
  assert found == []


def test_recipes_build_only_on_themselves_and_blink():
  found = []
  for module, targets, line, _, _ in _imports():
    if not module.startswith("zel_jax.recipes."):
      continue
    own = ".".join(module.split(".")[:3])
    for target in targets:
      if target is None or not target.startswith("zel_jax.recipes"):
        continue
      allowed = (target.startswith(own) or target == "zel_jax.recipes.base"
                 or target.startswith("zel_jax.recipes.blink"))
      if not allowed:
        found.append(f"{module}:{line} imports {target}")
  assert found == []


def test_the_recipe_registry_imports_no_recipe():
  found = [f"{m}:{line} imports {t}" for m, targets, line, _, _ in _imports()
           if m == "zel_jax.recipes" for t in targets
           if t and t.startswith("zel_jax.recipes.") and t != "zel_jax.recipes.base"]
  assert found == []


def test_no_import_cycle():
  graph: dict[str, set[str]] = {m: set() for m in MODULES}
  for module, targets, _, _, _ in _imports():
    graph[module].update(t for t in targets if t and t != module)
  # Tarjan's strongly connected components.
  index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  assert cycles == []


def test_imports_inside_functions_say_why():
  unexplained = [f"{m}:{line}" for m, _, line, inside, reason in _imports()
                 if inside and not reason]
  assert unexplained == []
