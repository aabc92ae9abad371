"""The `mpi` backend (DESIGN.md decision 4): one `mpirun` on the leader, sshd on the followers.

`command` builds the mpirun command line (pure: the toolkit's flags, custom options, per-host
payloads, the root cause from mpirun's output); `job` is each host's flow; `ssh` the per-job
sshd and ssh configuration and keys; `sshcheck` the leader's proof of every follower's sshd;
`rank` is `python -m launcher.mpi.rank`, the shim that gives each MPI rank its own host's
environment and execs the program.
"""
