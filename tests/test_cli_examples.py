"""Every example command in the tools' --help texts and in the documentation is one the tool accepts
(users copy them)."""
from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from xnect_app.bench import tta
from xnect_app.cli import bench, demo, eval as eval_cli, export, process, server, train

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "models/README.md", "docs/server.md")

# module whose docstring holds examples -> how its example lines start
EXAMPLE_SOURCES = {
    "xnect_app.cli.bench": "xnect-bench", "xnect_app.cli.export": "xnect-export",
    "xnect_app.cli.process": "xnect-process", "xnect_app.cli.demo": "xnect-demo",
    "xnect_app.cli.train": "xnect-train", "xnect_app.cli.eval": "xnect-eval",
    "xnect_app.bench.tta": "xnect-bench",
    "xnect_app.bench.pipeline": "python -m xnect_app.bench.pipeline",
    "xnect_app.bench.dynconv": "python -m xnect_app.bench.dynconv",
}
PARSERS = {"xnect-bench": bench.build_parser, "xnect-export": export.build_parser,
           "xnect-process": process.build_parser, "xnect-demo": demo.build_parser,
           "xnect-server": server.build_parser, "xnect-train": train.build_parser,
           "xnect-eval": eval_cli.build_parser}


def example_lines() -> list[tuple[str, str]]:
    found = []
    for module, prefix in EXAMPLE_SOURCES.items():
        doc = importlib.import_module(module).__doc__ or ""
        for line in doc.splitlines():
            line = line.strip()
            if line.startswith(prefix + " ") or line == prefix:
                found.append((prefix, _clean(line)))
    return found


def _clean(line: str) -> str:
    """A command without its trailing comment ("  # what it does", "  (machine 2 of 4)", a shell "&") and
    with "[--opt value]" (optional parts) kept as plain options."""
    line = re.split(r"\s+#|\s{2,}\(", line)[0].rstrip(" &")
    return re.sub(r"\[(--[^\]]+)\]", r"\1", line)


def doc_commands() -> list[tuple[str, str]]:
    """xnect-* commands of the documentation's code blocks, continuation lines joined (inline code spans
    are prose: tool names and single options)."""
    found = []
    for doc in DOCS:
        text = (REPO / doc).read_text()
        blocks = [re.sub(r"\\\n\s*", " ", b) for b in re.findall(r"```[a-z]*\n(.*?)```", text, re.S)]
        lines = [ln.strip() for b in blocks for ln in b.splitlines()]
        for line in lines:
            name = line.split(" ")[0]
            if name in PARSERS:
                found.append((name, _clean(line)))
    return sorted(set(found))


def parse(prefix: str, line: str):
    argv = shlex.split(re.split(r"\s[>|]\s", line)[0])[len(prefix.split()):]  # no shell redirection
    if prefix.startswith("python -m "):
        parser = importlib.import_module(prefix.split()[-1]).build_parser()
    else:
        parser = PARSERS[prefix]()
    return parser.parse_args(argv)


def test_the_help_texts_have_examples():
    prefixes = {p for p, _ in example_lines()}
    assert {"xnect-bench", "xnect-export", "xnect-process", "xnect-demo"} <= prefixes


def assert_accepted(prefix: str, line: str) -> None:
    try:
        args = parse(prefix, line)
    except SystemExit as e:  # argparse: 0 after --help, 2 on a bad option
        assert e.code == 0, f"{line!r} is refused by the parser"
        return
    if getattr(args, "prog", "") == "xnect-bench tta":
        tta.check_args(args)  # the options the bench refuses after parsing


@pytest.mark.parametrize("prefix,line", example_lines())
def test_example_is_accepted(prefix, line):
    assert_accepted(prefix, line)


def test_the_docs_have_commands():
    assert {p for p, _ in doc_commands()} >= {"xnect-demo", "xnect-process", "xnect-server", "xnect-train",
                                              "xnect-eval"}


@pytest.mark.parametrize("prefix,line", doc_commands())
def test_documented_command_is_accepted(prefix, line):
    assert_accepted(prefix, line)


def test_tta_bench_refuses_the_options_it_compares():
    from xnect_app.options import UserError

    args = parse("xnect-bench", "xnect-bench tta --scales 1,0.75,0.5")
    with pytest.raises(UserError, match="--bench-scales"):
        tta.check_args(args)


def doc_script_lines() -> list[str]:
    """`python examples/*.py ...` and `python scripts/*.py ...` lines of the documentation's code blocks."""
    found = []
    for doc in DOCS + ("docs/measurements.md", "docs/cli.md"):
        text = (REPO / doc).read_text()
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                if re.match(r"python3? (examples|scripts)/\w+\.py", line.strip()):
                    found.append(re.split(r"\s+#", line.strip())[0])
        found += re.findall(r"`(python3? (?:examples|scripts)/\w+\.py[^`]*)`", text)
    return sorted(set(found))


class _Parsed(Exception):
    pass


def test_the_docs_have_script_lines():
    assert any(line.startswith("python examples/ws_client.py") for line in doc_script_lines())


@pytest.mark.parametrize("line", doc_script_lines())
def test_documented_script_line_is_accepted(line, monkeypatch):
    """The script's own parser takes the line; the script stops right after parsing."""
    import argparse
    import runpy
    import sys

    argv = shlex.split(line)[1:]
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(_Parsed):
        try:
            runpy.run_path(str(REPO / argv[0]), run_name="__main__")
        except SystemExit as e:
            raise AssertionError(f"{line!r} is refused (exit {e.code})") from None
