"""``hyperplane completion bash|zsh|fish`` and completion itself, driven the way a shell drives
argcomplete (``_ARGCOMPLETE=1``, ``COMP_LINE``, ``COMP_POINT``, the answer on a file) and, for
bash, by bash itself running the printed script's completion function. Labs are stand-ins: a
state file in a run directory of the test's own, which is all the completers read (no root).
Completion against a real running lab is tests/lab/test_cli_tools_lab.py."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from hyperplane import labconfig
from kit import REPO
from kit.shellcomplete import cli_env, complete

SHELLS = ("bash", "zsh", "fish")


def fake_lab(run_dir, name: str, config: str = None) -> labconfig.Plan:
    """A lab as the completers see it: its state file with the plan, nothing running."""
    cfg = labconfig.load(config) if config else labconfig.default()
    plan = labconfig.resolve(cfg, name)
    d = run_dir / name
    d.mkdir(parents=True)
    (d / "state.json").write_text(json.dumps({"plan": plan.to_dict(), "pid": None}))
    return plan


@pytest.mark.parametrize("shell", SHELLS)
def test_each_shell_gets_a_script_that_completes_hyperplane(shell):
    p = subprocess.run([sys.executable, "-m", "hyperplane", "completion", shell],
                       env=cli_env(), capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert "hyperplane" in p.stdout and "_ARGCOMPLETE" in p.stdout
    if shell == "bash":
        n = subprocess.run(["bash", "-n"], input=p.stdout, capture_output=True, text=True)
        assert n.returncode == 0, n.stderr
        assert "complete -o nospace -o default -o bashdefault -F _python_argcomplete hyperplane" \
            in p.stdout
    elif shutil.which(shell):          # zsh -n / fish --no-execute check the syntax
        n = subprocess.run([shell, "-n"] if shell == "zsh" else [shell, "--no-execute"],
                           input=p.stdout, capture_output=True, text=True)
        assert n.returncode == 0, n.stderr


def test_an_unknown_shell_is_a_usage_error_naming_the_shells():
    p = subprocess.run([sys.executable, "-m", "hyperplane", "completion", "tcsh"],
                       env=cli_env(), capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 2 and "choose from 'bash', 'zsh', 'fish'" in p.stderr


def test_commands_subcommands_options_and_choices_complete(tmp_path):
    words, p = complete("hyperplane la", tmp_path)
    assert words == ["lab"], (words, p.stderr)
    words, _ = complete("hyperplane lab ", tmp_path)
    assert {"up", "status", "exec", "restart", "down", "list", "graph"} <= set(words)
    words, _ = complete("hyperplane lab graph --format ", tmp_path)
    assert words == ["mermaid", "dot"]
    words, _ = complete("hyperplane completion ", tmp_path)
    assert [w for w in words if not w.startswith("-")] == ["bash", "zsh", "fish"]
    words, _ = complete("hyperplane conntrack list --st", tmp_path)
    assert words == ["--state"]
    # the cursor in the middle of the line: what is before it counts
    words, _ = complete("hyperplane fu list", tmp_path, point=len("hyperplane fu"))
    assert words == ["function"]


def test_the_labs_and_their_nodes_functions_enis_and_environments_complete(tmp_path):
    run_dir = tmp_path / "run"
    plan = fake_lab(run_dir, "alpha", os.path.join(REPO, "examples", "natgw.toml"))
    fake_lab(run_dir, "beta")
    words, p = complete("hyperplane lab status --name ", tmp_path, run_dir)
    assert words == ["alpha", "beta"], (words, p.stderr)
    words, _ = complete("hyperplane lab graph --name a", tmp_path, run_dir)
    assert words == ["alpha"]
    # the default lab is "default", which does not exist here: nothing to offer
    words, p = complete("hyperplane function invoke ", tmp_path, run_dir)
    assert not [w for w in words if not w.startswith("-")], words
    fake_lab(run_dir, "default")     # and now there is one: --name's default is it
    words, _ = complete("hyperplane function invoke ", tmp_path, run_dir)
    assert [w for w in words if not w.startswith("-")] == ["fn-a", "fn-b"], words
    words, _ = complete("hyperplane function invoke --name beta ", tmp_path, run_dir)
    assert [w for w in words if not w.startswith("-")] == ["fn-a", "fn-b"]
    words, _ = complete("hyperplane function logs --name beta fn-b", tmp_path, run_dir)
    assert words == ["fn-b"]
    words, _ = complete("hyperplane function update --name alpha ", tmp_path, run_dir)
    assert [w for w in words if not w.startswith("-")] == [f.name for f in plan.functions]
    words, _ = complete("hyperplane lab exec --name alpha ", tmp_path, run_dir)
    assert {"fn-a-0", "db", "web", "hyperplane", "vpc", "internet"} <= set(words)
    words, _ = complete("hyperplane conntrack list --name alpha --eni ", tmp_path, run_dir)
    assert words == [plan.enis[0].id]
    words, _ = complete("hyperplane flowlogs --name alpha --eni eni-", tmp_path, run_dir)
    assert words == [plan.enis[0].id]
    words, _ = complete("hyperplane capture --name beta --env fn-", tmp_path, run_dir)
    assert words == ["fn-a-0", "fn-b-0", "fn-a", "fn-b"]


def test_a_broken_state_file_completes_nothing_and_prints_no_traceback(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "broken").mkdir(parents=True)
    (run_dir / "broken" / "state.json").write_text("{not json")
    words, p = complete("hyperplane function invoke --name broken ", tmp_path, run_dir)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert words is not None and not [w for w in words if not w.startswith("-")], words
    words, p = complete("hyperplane lab down --name ", tmp_path, tmp_path / "nowhere")
    assert p.returncode == 0 and words == [], (words, p.stderr)


def test_bash_itself_completes_through_the_printed_script(tmp_path):
    """The script as a user's ~/.bashrc evals it; its completion function run as bash runs it
    on <TAB> (COMP_WORDS, COMP_CWORD, COMP_LINE, COMP_POINT), against a `hyperplane` on PATH
    that is this checkout."""
    run_dir = tmp_path / "run"
    fake_lab(run_dir, "gamma")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "hyperplane"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} -m hyperplane \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    env = cli_env(run_dir)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    script = r'''
eval "$(hyperplane completion bash)"
try() {
    COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}; read -r -a COMP_WORDS <<< "$COMP_LINE"
    [[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
    COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMPREPLY=()
    _python_argcomplete hyperplane "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
    echo "$1|${COMPREPLY[*]}"
}
try "hyperplane lab gr"
try "hyperplane function invoke --name gamma "
try "hyperplane lab status --name g"
'''
    p = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                       timeout=120, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    got = dict(line.split("|", 1) for line in p.stdout.splitlines())
    assert got["hyperplane lab gr"].split() == ["graph"], p.stdout
    assert {"fn-a", "fn-b"} <= set(got["hyperplane function invoke --name gamma "].split())
    assert got["hyperplane lab status --name g"].split() == ["gamma"]
