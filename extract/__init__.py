"""Stage 1 of the ViS4mer pipeline: videos -> frozen-ViT token grids -> sealed HDF5 shards in cache/.

`extract.video` decodes and samples with PyAV, `extract.encoder` wraps a frozen HuggingFace ViT, `extract.pipeline`
runs the resumable, batched, distributed loop (Lightning `Trainer.predict`), and `python -m extract` is the command
behind `make extract`. Importing this package is cheap; the submodules import torch, av and transformers.
"""

DEFAULT_ENCODER = "google/vit-large-patch16-224-in21k"  # the paper's LVU encoder (ViT-L/16, ImageNet-21k)
