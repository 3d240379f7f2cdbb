"""The README and docs/ hold together: every relative link and anchor resolves, every `make` target and `harness`
command (with its --options) that a page shows exists, the README stays a front door (at most 20 KB), and every page
is reachable from it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from harness.paths import project_root

REPO = project_root()
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_BYTES = 20 * 1024
FENCE = re.compile(r"^```")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")


def _prose_and_code(text: str) -> tuple[list[str], list[str]]:
    """The page's lines outside fenced blocks, and the lines inside them."""
    prose, code, fenced = [], [], False
    for line in text.split("\n"):
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif fenced:
            code.append(line)
        else:
            prose.append(line)
    return prose, code


def slugs(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens, repeats
    numbered."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose_and_code(text)[0]:
        m = re.match(r"^#{1,6} (.+)$", line)
        if not m:
            continue
        base = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[tuple[str, str]]:
    prose = _prose_and_code(page.read_text(encoding="utf-8"))[0]
    found = []
    for line in prose:
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if not re.match(r"^[a-z]+:", target):  # http:, https:, mailto: are not checked offline
                found.append((line.strip()[:80], target))
    return found


def broken_links(page: Path) -> list[str]:
    bad = []
    for line, target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{page.relative_to(REPO)}: {target} (no such file) in: {line}")
        elif anchor and (dest.suffix != ".md" or anchor not in slugs(dest.read_text(encoding="utf-8"))):
            bad.append(f"{page.relative_to(REPO)}: {target} (no heading #{anchor} there) in: {line}")
    return bad


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))


def harness_commands() -> dict[str, set[str]]:
    """Each `harness` subcommand and the options it takes."""
    from harness.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}


def shown_commands(page: Path) -> list[list[str]]:
    """Every `make ...` / `harness ...` a page shows: a line of a fenced block (after a `$ ` prompt and VAR=value
    assignments) or an inline code span."""
    prose, code = _prose_and_code(page.read_text(encoding="utf-8"))
    candidates = [line.strip() for line in code]
    candidates += [span.strip() for line in prose for span in CODE_SPAN.findall(line)]
    out = []
    for text in candidates:
        text = re.sub(r"<[^>]*>", "X", text.removeprefix("$ "))  # a placeholder such as <run id> is one word
        for part in re.split(r"&&|\|\||;|\|", text.split(" #", 1)[0]):
            try:
                words = shlex.split(part)
            except ValueError:  # an unbalanced quote in a span that is not a command
                continue
            while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
                words = words[1:]
            if words and words[0] in ("make", "harness", ".venv/bin/harness") and len(words) > 1:
                out.append(words)
    return out


def unknown_commands(page: Path, targets: set[str], commands: dict[str, set[str]]) -> list[str]:
    bad = []
    for words in shown_commands(page):
        shown = " ".join(words)
        if words[0] == "make":
            for w in words[1:]:
                if "=" in w or w.startswith("-") or not re.match(r"^[a-z][\w-]*$", w):
                    continue
                if w not in targets:
                    bad.append(f"{page.relative_to(REPO)}: make {w} (no such target) in: {shown}")
            continue
        cmd = words[1]
        if not re.match(r"^[a-z][\w-]*$", cmd):  # a placeholder such as `harness <command>`
            continue
        if cmd not in commands:
            bad.append(f"{page.relative_to(REPO)}: harness {cmd} (no such command) in: {shown}")
            continue
        for w in words[2:]:
            option = w.split("=", 1)[0].rstrip(",.;)")
            if re.match(r"^--[a-z][\w-]*$", option) and option not in commands[cmd]:
                bad.append(f"{page.relative_to(REPO)}: harness {cmd} {option} (no such option) in: {shown}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    assert not broken_links(page), "\n".join(broken_links(page))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_make_target_and_harness_command_shown_exists(page):
    bad = unknown_commands(page, make_targets(), harness_commands())
    assert not bad, "\n".join(bad)


def test_the_readme_is_a_front_door_that_reaches_every_page():
    readme = REPO / "README.md"
    assert readme.stat().st_size <= README_MAX_BYTES, f"README.md is {readme.stat().st_size:,} bytes"
    text = readme.read_text(encoding="utf-8")
    assert text.index("make setup") < text.index("make eval TASK=imdb") < 1000  # the two set-up commands come first
    linked = {(REPO / t.partition("#")[0]).resolve() for _, t in links(readme) if t.startswith("docs/")}
    unreached = [p.name for p in PAGES[1:] if p.name != "README.md" and p.resolve() not in linked]
    assert not unreached, f"docs pages the README's page map does not link: {unreached}"


def test_the_checks_can_fail(tmp_path):
    """A wrong anchor, a missing file, an unknown make target, command or option are all reported."""
    (tmp_path / "docs").mkdir()
    other = tmp_path / "docs" / "other.md"
    other.write_text("# Other page\n\n## A section\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\nSee [ok](other.md#a-section), [bad anchor](other.md#nowhere), [gone](missing.md), "
        "[self](#page).\n\n```bash\nmake setup\nmake no-such-target\nharness frobnicate\n"
        "HARNESS_X=1 harness run imdb --no-such-flag\n```\n\nAlso `harness ls -v` and `make eval TASK=imdb`.\n"
    )
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        bad = broken_links(page)
        assert len(bad) == 2 and "#nowhere" in bad[0] and "missing.md" in bad[1]
        commands = {"run": {"--help"}, "ls": {"-v"}}
        wrong = unknown_commands(page, {"setup", "eval"}, commands)
        assert len(wrong) == 3, wrong
        assert "no-such-target" in wrong[0] and "frobnicate" in wrong[1] and "--no-such-flag" in wrong[2]
    finally:
        REPO = saved
