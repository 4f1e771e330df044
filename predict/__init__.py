"""Prediction on new video files with a trained head: `python -m predict VIDEO` / `make predict VIDEO=...`.

Prediction needs both stages, which never import each other (`extract/` decodes and encodes, `heads/` classifies), so
it lives in this package, which imports both:

* `predict.features` finds a video's token grids: in the training cache (a video that was extracted for training),
  in `cache/predict/<tag>/` (a video predicted before), or by streaming it through the checkpoint's own encoder
  (decode -> encode -> cache, one batch of frames in memory at a time) with the sampling the head was trained on;
* `predict.classify` applies the data set's evaluation protocol to them (K uniform segments; or every window, softmax
  averaged per video), reading one block of windows at a time;
* `predict.output` prints one line per video and writes `<OUT>/<video>.json`, `<OUT>/<video>.png` (probabilities
  along the video's time line, or the top-k bar chart) and `<OUT>/predictions.csv`.
Importing this package is cheap; its modules import torch, av and transformers.
"""
