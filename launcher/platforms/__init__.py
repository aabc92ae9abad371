"""Where the hosts come from: the platform a launcher runs on, read into one `Platform`.

Owns `launcher run --hosts-from`: each platform module is a pure function from the
environment (and, for SageMaker, the text of one file) to a `Platform` that says which hosts
take part, which one this is, its node rank, the ranks it runs when the platform says so, and
where every value came from (`launcher run --dry-run` prints it). Everything after this step
is shared with `train`: the meeting over the control channel, the plan, supervision.

    model.py       Platform, Source, PlatformError, TaskRank
    hostlist.py    Slurm's host-list grammar (pure)
    slurm.py       a Slurm step: one launcher per node, or one task per GPU
    kubernetes.py  Kubeflow PyTorchJob, Indexed Job, JobSet pods
    detect.py      the detection order, the SageMaker tree, a static list, `auto`
"""
