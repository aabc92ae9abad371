"""`launcher local`: a cluster of N hosts on this machine, the same code path as real hosts.

`cluster` writes one `/opt/ml`-shaped tree and environment per simulated host; `zygote` is
`python -m launcher.local.zygote`, the single child that imports the pipeline once and forks
every host's `train`.
"""
