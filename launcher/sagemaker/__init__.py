"""The SageMaker training contract: the `/opt/ml` tree in, the user's code and environment out.

`config.load` reads the tree into frozen types (`tree`), through the strict JSON parsing of
`files`; `codesource` fills `code/` from `sagemaker_submit_directory`; `entrypoint` checks the
entry point and builds the pip and run commands; `smenv` gives the `SM_*` variables and argv
byte for byte as sagemaker-training 5.1.4 does; `job` runs the front half of `train` on them
(fetch, resolve, install, the user environment, the `JobSpec`). Nothing here meets other hosts
or supervises a rank.
"""
