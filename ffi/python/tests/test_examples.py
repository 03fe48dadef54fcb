"""The README's C program and Python script are the files in the repository, and they (and the
numpy data-parallel training example) run."""

import os
import re
import subprocess
import sys

import pytest

from conftest import PKG_PARENT, REPO, launch


def readme_block(lang):
    text = open(os.path.join(REPO, "README.md")).read()
    section = text.split("## C and Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```%s\n(.*?)```" % lang, section, re.S)
    assert blocks, "no %s block in the README's C and Python section" % lang
    return blocks[0]


def test_readme_c_program_is_examples_c_allreduce():
    assert readme_block("c") == open(os.path.join(REPO, "examples/c/allreduce.c")).read()


def test_readme_python_script_is_hello_py_and_runs():
    path = os.path.join(PKG_PARENT, "examples", "hello.py")
    assert readme_block("python") == open(path).read()
    code, out = launch(2, path, timeout=60)
    assert code == 0, out
    assert "rank 0 of 2: average of ranks = 0.5" in out, out
    assert "rank 1 of 2: average of ranks = 0.5" in out, out


@pytest.mark.parametrize("n", [2, 4])
def test_train_dp_matches_single_process(n):
    code, out = launch(n, os.path.join(PKG_PARENT, "examples", "train_dp.py"), "--steps", 40, timeout=120)
    assert code == 0, out
    m = re.search(r"(\d+) ranks, 40 steps: loss ([\d.]+) -> ([\d.]+); max difference from single-process training ([\d.e+-]+)", out)
    assert m, out
    assert int(m.group(1)) == n
    assert float(m.group(4)) <= 1e-5
    assert float(m.group(3)) < 0.5 * float(m.group(2))


def test_elastic_example_heals_back_to_full_size():
    """examples/elastic.py: kill, shrink, a replacement grows the job back to 4, final weights
    equal single-process training."""
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_PARENT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.run(
        [sys.executable, os.path.join(PKG_PARENT, "examples", "elastic.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
    )
    assert p.returncode == 0, p.stdout
    m = re.search(r"differ from single-process training by at most ([\d.e+-]+); replacement start to its first collective: ([\d.]+) s", p.stdout)
    assert m, p.stdout
    assert float(m.group(1)) <= 1e-9
    assert "GROWN rank 0 of 4" in p.stdout and "JOINED rank 3 of 4" in p.stdout, p.stdout
