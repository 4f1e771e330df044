"""`make doctor` / `python -m doctor`: one screen that says whether this machine can run the pipeline, and how fast.

torch and CUDA versions, the devices, PyKeOps's health on CPU and CUDA (`heads.s4.keops_health`: the real `keops`
Cauchy kernel compiled, run and checked against `torch`), numba's compiled loops, the S4 backend `auto` picks per
device, whether each data set's default encoder is available offline, and the free disk under CACHE_DIR. It imports
both stages (heads for S4, extract for the encoder's name), so it lives in its own package.
"""
