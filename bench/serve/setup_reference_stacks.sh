#!/usr/bin/env bash
# Create the reference stacks' virtual environments for bench/serve (about 2 minutes).
#
#   bench/serve/setup_reference_stacks.sh /tmp/serveref
#   export MMS_VENV=/tmp/serveref/mms TS_VENV=/tmp/serveref/ts SPI_PATH=/tmp/serveref/spi_path
#
# mms: sagemaker-inference 1.10 + Multi Model Server 1.1.11 (needs Java 17 on PATH).
# ts:  TorchServe 0.12 + sagemaker-pytorch-inference 2.0.25 (the current SageMaker PyTorch
#      inference toolkit). Its DefaultPytorchInferenceHandler is also put on the mms stack's
#      PYTHONPATH (SPI_PATH), so that both reference stacks run the toolkit's own default hooks.
# setuptools<81: both toolkits import pkg_resources, which setuptools 81 removed.
# pyyaml: TorchServe's Python backend imports it without declaring it.
set -euo pipefail
dest=${1:?usage: $0 DEST_DIR}
mkdir -p "$dest"
python3 -m venv "$dest/mms"
"$dest/mms/bin/pip" install -q torch==2.13.0 numpy psutil 'setuptools<81' \
    'sagemaker-inference==1.10.1' 'multi-model-server==1.1.11'
python3 -m venv "$dest/ts"
"$dest/ts/bin/pip" install -q torch==2.13.0 numpy psutil pyyaml 'setuptools<81' \
    'torchserve==0.12.0' 'torch-model-archiver==0.12.0' 'sagemaker-pytorch-inference==2.0.25'
site=$("$dest/ts/bin/python" -c 'import sagemaker_pytorch_serving_container as m, os; print(os.path.dirname(m.__file__))')
mkdir -p "$dest/spi_path"
ln -sfn "$site" "$dest/spi_path/sagemaker_pytorch_serving_container"
java -version
