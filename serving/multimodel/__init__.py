"""Multi-model endpoints (`SAGEMAKER_MULTI_MODEL=true`): many models behind one server.

`policy` (which model to evict: pure), `registry` (the models the platform loaded, shared by
every worker), `models` (one worker's loaded models: on-demand loading off the event loop,
eviction), `routes` (the SageMaker multi-model HTTP contract).
"""
