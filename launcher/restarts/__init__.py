"""Whole-job restarts (`--max-restarts`): attempts of the same job, decided by the leader.

`policy` is the pure retry rule (what is retried, the budget, the early stop of a job that
fails the same way without progress); `checkpoints` resolves the checkpoint folder and reads
its latest step; `gpumem` waits, bounded, for a GPU host's memory to be released between
attempts; `attempts` is the loop above the supervisor (DESIGN.md decision 16): each attempt
meets the hosts afresh (fresh ports, run id and connections), runs `app.execute`, and the
leader tells every host whether to start the next one.
"""
