"""Print what a rank was told about its place in the job, one `TUPLE {json}` line.

The fields: rank, local_rank, world_size, node_rank (GROUP_RANK), master (MASTER_ADDR), and the
SageMaker view: SM_HOSTS, SM_CURRENT_HOST, SM_NUM_GPUS. Standard library only: the tests
compare platforms by these lines without paying for torch in every rank.
"""

import json
import os
import sys


def main() -> int:
    env = os.environ
    fields = {
        "rank": int(env["RANK"]),
        "local_rank": int(env["LOCAL_RANK"]),
        "world_size": int(env["WORLD_SIZE"]),
        "node_rank": int(env["GROUP_RANK"]),
        "master": env["MASTER_ADDR"],
        "sm_hosts": json.loads(env.get("SM_HOSTS", "null")),
        "sm_current_host": env.get("SM_CURRENT_HOST"),
        "sm_num_gpus": env.get("SM_NUM_GPUS"),
    }
    print("TUPLE " + json.dumps(fields, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
