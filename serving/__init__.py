"""`serve`: the inference half of the SageMaker container contract.

A gunicorn master with pre-forked asgi workers hosts the model in `$SAGEMAKER_BASE_DIR/model`
behind `GET /ping` and `POST /invocations`, with the PyTorch inference toolkit's hooks
(`model_fn`, `input_fn`, `predict_fn`, `output_fn`, `transform_fn`). See docs/serving.md.
Importing this package imports neither torch nor gunicorn.
"""
