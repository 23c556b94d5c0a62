"""``python -m workbench.core.builtin_templates [--check]``: learn the built-in templates from
core/builtin_template_sources.py and write them here, or (``--check``) exit 1 when a file is missing, stale or
extra."""

from __future__ import annotations

import argparse
import sys

from .generate import learn_builtin, problems, write_templates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workbench.core.builtin_templates", description=__doc__)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if the files differ from what "
                                                          "the sources and the installed transformers give")
    args = ap.parse_args(argv)
    from transformers.utils import logging

    from ..builtin_template_sources import SOURCES
    from . import DIRECTORY

    logging.set_verbosity_error()  # the probes' tiny sizes make transformers warn about each one (rope, gelu)

    templates, notes = learn_builtin(SOURCES)
    for note in notes:
        print(f"note: {note}")
    if args.check:
        found = problems(templates, DIRECTORY)
        for problem in found:
            print(problem, file=sys.stderr)
        print(f"{len(SOURCES)} sources, {len(templates)} templates: "
              f"{'up to date' if not found else f'{len(found)} problems'}")
        return 1 if found else 0
    written, removed = write_templates(templates, DIRECTORY)
    print(f"{len(SOURCES)} sources, {len(templates)} templates in {DIRECTORY}: {written} written, {removed} removed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
