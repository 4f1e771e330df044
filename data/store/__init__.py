"""The feature cache: the boundary between stage 1 (extract) and stage 2 (heads), HDF5 schema 1.

Layout of one cache (docs/design.md, "The cache (HDF5 schema 1)"):

    cache/<dataset>/<tag>/shard-r{rank:02d}-{index:05d}.h5   sealed, immutable shard
                          shard-r..-.....h5.partial          shard being written (never read)
                          failures.jsonl                     {"video_id", "path", "error"} per failed video

    file attrs : schema=1, encoder, encoder_hash, family, image_size, patch_size, hidden_size, grid=[h, w],
                 special_tokens, pool, fps or segments, frames_per_segment, frame_interval (video encoders),
                 dtype="float16", created, version
    /videos/<escaped id>/tokens : float16 (T, P, D), chunks (1, P, D), uncompressed
    /videos/<escaped id> attrs  : video_id, timestamps (T,) seconds, duration, source; from extraction also
                                  display_matrix (9 int32, FFmpeg's, applied to the frames) and video_stream

Axis letters: T segments (or frames at a fixed fps), P tokens per segment (S special tokens, then the h*w grid), D
channels. S is the ``special_tokens`` attr (CLS, distillation, registers; 0 for SigLIP and VideoMAE); caches written
before it existed hold ViT tokens and are read as S = 1 (``FeatureStore.special_tokens``).

`ShardWriter` appends videos to a `.partial` file and seals it (flush, fsync, rename to `.h5`, fsync the
folder) after `max_videos` videos or before it would exceed `max_bytes`, and at `close()`. A killed writer
therefore loses only its open `.partial`; `FeatureStore` indexes sealed shards only, so those videos count as
not done and a resumed extraction redoes them. Writers of several runs or nodes may share a folder: each `.partial`
is created exclusively and locked by its writer, `remove_dead_partials` removes only those whose writer is gone,
and a writer renames only the file it created. A full disk raises `DiskFullError` (sealed shards kept).
Tokens are stored uncompressed on purpose: ViT activations barely compress, and training reads random rows of
them many times, so read speed matters more than disk.

`FeatureStore` reads any subset of segments of a video. Each segment is one raw (unfiltered) HDF5 chunk: the
store asks HDF5 once per video where its chunks lie (`get_chunk_info`) and then reads the requested rows with
`os.preadv` straight into the output array, one call per run of consecutive rows. h5py's own fancy indexing is
~100x slower for the random sorted subsets that training draws; datasets of any other layout (compressed,
other chunking) are read through HDF5. The store pickles into DataLoader workers and (re)opens its files
lazily in each process.

Modules: `layout` (names, tags, attrs, failures), `writer` (`ShardWriter`), `reader` (`FeatureStore`).
Only numpy, h5py and the standard library are used here, so both stages can import this module cheaply.
"""

from __future__ import annotations

from data.store.layout import (
    FEATURE_KEYS,
    PROVENANCE_KEYS,
    SCHEMA,
    MissingVideoError,
    StoreError,
    append_failure,
    escape_id,
    find_caches,
    make_tag,
    partial_shards,
    read_failures,
    unescape_id,
)
from data.store.reader import FeatureStore
from data.store.writer import DiskFullError, ShardWriter, remove_dead_partials

__all__ = [
    "FEATURE_KEYS",
    "PROVENANCE_KEYS",
    "SCHEMA",
    "DiskFullError",
    "FeatureStore",
    "MissingVideoError",
    "ShardWriter",
    "StoreError",
    "append_failure",
    "escape_id",
    "find_caches",
    "make_tag",
    "partial_shards",
    "read_failures",
    "remove_dead_partials",
    "unescape_id",
]
