"""The training application of stage 2 (what `python -m heads train|eval|report` runs):

  run.py         train() and evaluate(): resolve the data set and cache, build the head, fit / test, write the run
  run_dir.py     the run directory: versions, results.json, predictions.csv, metrics.csv kept across a resume
  module.py      the LightningModule around an injected head (loss, per-video evaluation, AdamW + plateau LR)
  datamodule.py  the LightningDataModule over a feature cache and a data set's records (the clip protocols)
  optim.py       AdamW parameter groups from the `_optim` tags of the S4 parameters
  report.py      curves and confusion matrix of a finished run
"""
