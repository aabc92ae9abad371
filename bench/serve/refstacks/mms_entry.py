"""sagemaker-inference 1.10 + Multi Model Server, as the pre-TorchServe SageMaker PyTorch
inference containers ran it: the toolkit's `start_model_server` with the PyTorch toolkit's
handler service (its DefaultPytorchInferenceHandler hooks).

Run with the MMS venv's python. The only change from the toolkit's own start-up is where it
writes its properties file (BENCH_STATE_DIR instead of /etc), so the bench leaves /etc alone.
"""

import os

from sagemaker_inference import model_server  # type: ignore[import-not-found]

model_server.MMS_CONFIG_FILE = os.path.join(
    os.environ["BENCH_STATE_DIR"], "sagemaker-mms.properties"
)
model_server.start_model_server(
    handler_service="sagemaker_pytorch_serving_container.handler_service"
)
