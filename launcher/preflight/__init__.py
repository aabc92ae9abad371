"""Preflight: every host, GPU, link and directory of a job checked in seconds, after the hosts
meet and before any user code runs; the bad host named (docs/preflight.md).

* `rows`: pure. The `Row` (check, host, GPU, value, unit, threshold, verdict), its JSON form,
  the table on stderr, the failure lines, `preflight.json`.
* `thresholds`: pure. Defaults per GPU model (with which floors are calibrated), the overrides
  from the settings, and the fleet-wide rules (equal inventory, fleet median, the cross-host
  floor and the pairwise search for the slow host).
* `inventory`: NVML facts per GPU behind the `HealthProbe` protocol (fakes in tests) and the
  per-host inventory rules; `storage`: the job's directories writable with free space.
* `probe`: the child process, run with the job's own Python, the only place torch is
  imported: matmul, memory copy, all_reduce within the host and across hosts (gloo on CPU,
  NCCL on GPUs), pairwise tests when the whole is below the floor; `probe_gpu`, its GPU half.
* `gather`: the leader collects every host's rows over the control channel, judges the fleet
  and sends the verdict back; `step`: the phase as `commands` calls it (exit 78 on failure).
"""
