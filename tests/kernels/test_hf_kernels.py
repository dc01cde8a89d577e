"""The checkout's `kernels/` directory never answers to the top-level name `kernels` (the Hugging Face package's,
which transformers >= 5 imports): run from the root, `import kernels` gets that package, or an empty stand-in
that transformers reads as "not installed"."""
import os
import pathlib
import shutil
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


def test_two_checkouts_on_the_path_hand_the_name_on_instead_of_to_each_other(tmp_path):
    # A second checkout (an exported tree put in front to compare versions) used to take the name from this one and
    # hand it back: a RecursionError at transformers' first model import.
    shutil.copytree(ROOT / "kernels", tmp_path / "other" / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "other"), str(ROOT)]))
    result = subprocess.run([sys.executable, "-c", "import kernels; from transformers import PreTrainedModel; "
                             "print(getattr(kernels, '__file__', None))"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    where = result.stdout.strip()
    assert where == "None" or not (pathlib.Path(where).is_relative_to(tmp_path)
                                   or pathlib.Path(where).is_relative_to(ROOT))
