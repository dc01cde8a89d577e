"""The checkout's `kernels/` directory never answers to the top-level name `kernels` (the Hugging Face package's,
which transformers >= 5 imports): run from the root, `import kernels` gets that package, or an empty stand-in
that transformers reads as "not installed"."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_top_level_name_is_not_our_package():
    out = _run("import kernels, faircalib.kernels as ours\n"
               "print(kernels is not ours, getattr(kernels, '__file__', None) != ours.__file__, "
               "hasattr(kernels, 'quantize_act_packed'))")
    assert out == "True True False"


def test_without_the_hugging_face_package_a_stand_in_without_file_or_version():
    out = _run("import importlib.machinery, sys\n"
               "real = importlib.machinery.PathFinder.find_spec\n"
               "def hide(name, path=None, target=None):  # as if the Hugging Face package were not installed\n"
               "    return None if name == 'kernels' and path is not None else real(name, path, target)\n"
               "importlib.machinery.PathFinder.find_spec = hide\n"
               "import importlib.util, kernels\n"
               "print(getattr(kernels, '__file__', None), getattr(kernels, '__version__', None), "
               "importlib.util.find_spec('kernels') is not None)")
    assert out == "None None True"
