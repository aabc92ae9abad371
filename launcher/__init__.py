"""ml-launcher: start, supervise and report distributed training jobs.

Importing this package is cheap on purpose: no torch, no NVML, no boto3. `train` must start
in milliseconds, so every heavy dependency is imported lazily where it is used.
"""

__version__ = "0.1.0"
