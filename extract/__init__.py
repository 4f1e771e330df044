"""Stage 1 of the ViS4mer pipeline: videos -> frozen-encoder token grids -> sealed HDF5 shards in cache/.

`extract.video` decodes and samples with PyAV, `extract.families` lists the encoder families, `extract.encoder` wraps
a frozen HuggingFace encoder of one of them, `extract.pipeline` runs the resumable, batched, distributed loop
(Lightning `Trainer.predict`), and `python -m extract` is the command behind `make extract`. Importing this package is
cheap; the submodules import torch, av and transformers.
"""

DEFAULT_ENCODER = "google/vit-large-patch16-224-in21k"  # the paper's LVU encoder (ViT-L/16, ImageNet-21k)
# Breakfast and COIN: the paper's clip features came from Video Swin-B (Kinetics-600), which transformers has no class
# for; the closest public checkpoint it loads is TimeSformer-B fine-tuned on Kinetics-600 (README, "Encoders").
DEFAULT_CLIP_ENCODER = "facebook/timesformer-base-finetuned-k600"
# The default ENCODER by the kind of features the paper used for a data set (VideoDataset.paper_features).
DEFAULT_ENCODERS = {"frames": DEFAULT_ENCODER, "clips": DEFAULT_CLIP_ENCODER}
