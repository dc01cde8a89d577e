"""The benchmark scripts under `benchmarks/` (not a package) loaded as modules, for tests of their CPU-side parts."""
import importlib.util
from pathlib import Path


def load(name: str):
    """benchmarks/<name>.py as a module named `name`."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
