"""Every example command in the tools' --help texts is one the tool accepts (a user copies them)."""
from __future__ import annotations

import importlib
import re
import shlex

import pytest

from xnect_app.bench import tta
from xnect_app.cli import bench, demo, export, process

# module whose docstring holds examples -> how its example lines start
EXAMPLE_SOURCES = {
    "xnect_app.cli.bench": "xnect-bench", "xnect_app.cli.export": "xnect-export",
    "xnect_app.cli.process": "xnect-process", "xnect_app.cli.demo": "xnect-demo",
    "xnect_app.bench.tta": "xnect-bench",
    "xnect_app.bench.pipeline": "python -m xnect_app.bench.pipeline",
    "xnect_app.bench.dynconv": "python -m xnect_app.bench.dynconv",
}
PARSERS = {"xnect-bench": bench.build_parser, "xnect-export": export.build_parser,
           "xnect-process": process.build_parser, "xnect-demo": demo.build_parser}


def example_lines() -> list[tuple[str, str]]:
    found = []
    for module, prefix in EXAMPLE_SOURCES.items():
        doc = importlib.import_module(module).__doc__ or ""
        for line in doc.splitlines():
            line = line.strip()
            if line.startswith(prefix + " ") or line == prefix:
                # drop a trailing comment: "  # what it does" or "  (machine 2 of 4)"
                found.append((prefix, re.split(r"\s{2,}[#(]", line)[0]))
    return found


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


@pytest.mark.parametrize("prefix,line", example_lines(), ids=lambda v: v if " " in v and "-" in v else None)
def test_example_is_accepted(prefix, line):
    try:
        args = parse(prefix, line)
    except SystemExit as e:  # argparse: 0 after --help, 2 on a bad option
        assert e.code == 0, f"{line!r} is refused by the parser"
        return
    if getattr(args, "prog", "") == "xnect-bench tta" or prefix.endswith("bench.tta"):
        tta.check_args(args)  # the options the bench refuses after parsing


def test_tta_bench_refuses_the_options_it_compares():
    from xnect_app.cli.model_args import UserError

    args = parse("xnect-bench", "xnect-bench tta --scales 1,0.75,0.5")
    with pytest.raises(UserError, match="--bench-scales"):
        tta.check_args(args)
