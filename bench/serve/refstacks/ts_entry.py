"""TorchServe 0.12 as the SageMaker PyTorch inference toolkit (sagemaker-pytorch-inference
2.0.25, the current containers) starts it: its `serve` entry point, unchanged but for where it
writes its properties file (BENCH_STATE_DIR instead of /etc).

Run with the TorchServe venv's python, with the bench's state directory as working directory
(the toolkit keeps its model store under the working directory).
"""

import os

from sagemaker_pytorch_serving_container import (  # type: ignore[import-not-found]
    serving,
    torchserve,
)

torchserve.TS_CONFIG_FILE = os.path.join(os.environ["BENCH_STATE_DIR"], "sagemaker-ts.properties")
serving.main()
