"""Hang detection: a job that stops making progress is found, its ranks' stacks are taken,
and the rank to blame is named.

This subpackage owns the launcher's side of issue 14, as building blocks the supervisor
wires in (docs/hangs.md):

* `progress`: the per-rank progress files (created before the ranks start, named to each rank
  through `launcher.contract.PROGRESS_FILE`, read through read-only mappings, torch-free).
* `verdict`: pure. The hang policy (a fixed window, the automatic one learned from the job's
  own quiet periods, off), the `Tracker` that turns progress samples and a clock into a
  `Hung` verdict, and the suspects (least progress, a stack outside any collective).
* `watch`: the `Monitor` thread that samples the files and reports one verdict.
* `stacks`: every rank's Python stack, through py-spy where ptrace is allowed, else through
  the stack signal that `collectives` (or a stdlib script) registered; parsed into frames.
* `flightrec`: torch's flight-recorder variables for the ranks (never overriding the user's)
  and the dumps found afterwards.
* `summary`: pure. The culprit line that opens `output/failure`, and the details under it.
* `ondemand`: `launcher stacks` across hosts: the leader's local socket that answers with
  every host's stacks, and its client.
* `job`: the wiring of all of these for one run (`JobWatch`) and `launcher stacks`' reading.

The rank's side (writing progress, dumping stacks on the signal) is in `launcher.contract`,
because it must run without torch and `collectives` imports nothing else of the launcher.
Nothing here imports torch or a third-party package; py-spy is a program we run.
"""
