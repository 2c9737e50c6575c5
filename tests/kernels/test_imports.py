"""The layering kernels → layers → models: no module under effjax/kernels imports effjax.models (read with ast)."""
import ast
import pathlib

import effjax.kernels

KERNELS = pathlib.Path(effjax.kernels.__file__).parent


def imported_modules(path):
  """Every module name an `import` or `from ... import` statement of the file names (relative ones resolved)."""
  package = "effjax.kernels"
  names = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names += [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
      names += [base] + [f"{base}.{a.name}" for a in node.names]
  return names


def test_no_kernel_module_imports_a_model():
  files = sorted(KERNELS.glob("*.py"))
  assert len(files) > 5
  offenders = {f.name: m for f in files for m in imported_modules(f)
               if m == "effjax.models" or m.startswith("effjax.models.")}
  assert not offenders, offenders


def test_the_import_reader_sees_model_imports(tmp_path):
  probe = tmp_path / "probe.py"
  probe.write_text("import effjax.models.vit\nfrom effjax.models import crate\nfrom ..models import fit\n")
  assert imported_modules(probe) == ["effjax.models.vit", "effjax.models", "effjax.models.crate", "effjax.models",
                                     "effjax.models.fit"]
