"""Print one line naming this rank and exit 0."""

import os
import sys

print(f"ok rank {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')}", *sys.argv[1:])
