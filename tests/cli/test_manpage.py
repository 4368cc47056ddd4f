"""``hyperplane man``: hyperplane(1) from the parser. The committed man/hyperplane.1 must be
what the generator writes now (so it never goes stale), list every command, subcommand and
option of the parser, render without a warning (groff, Debian's groff-base; CI installs it),
and be installed (pyproject's data-files)."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

import pytest

from hyperplane.cli import build_parser, manpage
from kit import REPO

PAGE = os.path.join(REPO, "man", "hyperplane.1")
REGENERATE = "regenerate it: python3 -m hyperplane man > man/hyperplane.1"


def committed() -> str:
    with open(PAGE, encoding="utf-8") as f:
        return f.read()


def commands(parser, path=("hyperplane",)):
    """(command path, parser) of every command and subcommand."""
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield path + (name,), sub
                yield from commands(sub, path + (name,))


def test_the_committed_page_is_what_the_parser_gives_now():
    assert committed() == manpage.manpage(build_parser()), \
        f"man/hyperplane.1 is stale; {REGENERATE}"


def test_hyperplane_man_prints_it():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "hyperplane", "man"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert p.stdout == committed()


def test_every_command_subcommand_and_option_is_in_the_page():
    page = committed()
    roff = lambda s: s.replace("-", "\\-")          # noqa: E731
    headings = [page.split("\n")[i + 1] for i, line in enumerate(page.split("\n"))
                if line == ".SS"]
    found = 0
    for path, parser in commands(build_parser()):
        heads = [h for h in headings if h.split(" [")[0].split(" {")[0] in (
            roff(" ".join(path)), roff(" ".join(path)) + " " + roff("_".join(path[1:]).upper()
                                                              + "_COMMAND"))]
        assert heads, f"no section for {' '.join(path)}; {REGENERATE}"
        section = page.split(".SS\n" + heads[0] + "\n", 1)[1].split("\n.SS\n")[0]
        for a in parser._actions:
            for opt in a.option_strings:
                if opt not in ("-h", "--help"):
                    assert f"\\fB{roff(opt)}\\fR" in section, (path, opt)
        found += 1
    assert found >= 35     # demo, lab up ... completion, man: 35 commands today
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", '"EXIT STATUS"',
                    "ENVIRONMENT", "FILES", '"SEE ALSO"'):
        assert f"\n.SH {section}\n" in page, section
    assert ".B 3\nNo such lab/node." in page and ".B HYPERPLANE_RUN_DIR" in page


@pytest.mark.skipif(shutil.which("groff") is None and os.environ.get("CI") != "true",
                    reason="groff is not installed (Debian: groff-base)")
def test_the_page_renders_without_a_warning():
    p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", PAGE], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", PAGE], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, GROFF_NO_SGR="1"))
    text = re.sub(".\b", "", p.stdout)            # overstruck bold and underline
    assert "HYPERPLANE(1)" in text and "EXIT STATUS" in text and "lab graph" in text


def test_the_page_is_installed_to_share_man_man1():
    try:
        import tomllib
    except ImportError:                              # Python < 3.11
        import tomli as tomllib
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert project["tool"]["setuptools"]["data-files"]["share/man/man1"] == ["man/hyperplane.1"]


def test_man_install_writes_the_page_under_a_prefix_and_man_reads_it(tmp_path):
    """`pip install -e .` installs no data files, so `hyperplane man --install` does."""
    env = dict(os.environ, PYTHONPATH=REPO)
    p = subprocess.run([sys.executable, "-m", "hyperplane", "man", "--install", str(tmp_path)],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    page = tmp_path / "share" / "man" / "man1" / "hyperplane.1"
    assert page.read_text() == committed()
    assert str(page) in p.stdout
    if shutil.which("man"):
        found = subprocess.run(["man", "-M", str(tmp_path / "share" / "man"), "-w",
                                "hyperplane"], capture_output=True, text=True, timeout=60)
        assert found.stdout.strip() == str(page), found.stderr


def test_man_install_to_a_folder_it_cannot_write_says_so(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = dict(os.environ, PYTHONPATH=REPO)
    p = subprocess.run([sys.executable, "-m", "hyperplane", "man", "--install", str(blocker)],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "cannot write" in p.stderr and "Traceback" not in p.stderr
