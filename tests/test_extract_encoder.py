"""extract/encoder.py: preprocessing vs HF ViTImageProcessor, loading by path, pooling, hashing, offline errors."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from test_extract_media import write_video
from transformers import ViTConfig, ViTImageProcessor, ViTModel

from data.errors import UserError
from extract.encoder import TINY_RANDOM, FrozenEncoder, Preprocess, build_tiny_random, load_encoder, weights_hash
from extract.video import SampledVideo, Sampling

try:  # transformers 5 without torchvision: the PIL implementation behind ViTImageProcessor
    from transformers import ViTImageProcessorPil as ViTImageProcessor
except ImportError:  # pragma: no cover - transformers 4
    from transformers import ViTImageProcessor

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def tiny_vit(image_size=32, patch_size=8, hidden=32, seed=1) -> ViTModel:
    torch.manual_seed(seed)
    config = ViTConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=2 * hidden)
    return ViTModel(config, add_pooling_layer=False).eval()


@pytest.mark.parametrize("size", [224, 32])
def test_preprocessing_matches_vit_image_processor(tmp_path, size):
    """FFmpeg (YUV->RGB, then antialiased bilinear) vs decode-to-RGB + ViTImageProcessor (PIL bilinear).

    Tolerance, in normalised units (1 grey level = 2/255 = 0.0078 with mean = std = 0.5): mean |diff| <= 0.005 and
    max |diff| <= 0.04. Both sides run the same antialiased bilinear filter from the same RGB pixels; they differ
    only in fixed-point rounding (measured: max 1 grey level at 224 px, about 4 at a 10x downscale to 32 px, where
    the filter support is wide and edge handling differs). The encoder's tokens then agree to ~1e-2 relative.
    """
    path = write_video(tmp_path / "tex.mp4", n=6, size=(320, 240), texture=True)
    frames, _ = SampledVideo(path, Sampling(segments=6), size=size).read()  # (6, S, S, 3)
    with av.open(str(path)) as container:
        full = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    processor = ViTImageProcessor(size={"height": size, "width": size})
    reference = processor(full, return_tensors="np")["pixel_values"]  # (6, 3, S, S)
    model = tiny_vit(image_size=size, patch_size=size // 4)
    encoder = FrozenEncoder(model, "test", Preprocess())
    ours = encoder.pixel_values(torch.from_numpy(frames)).numpy()  # (6, 3, S, S)
    diff = np.abs(ours - reference)
    assert diff.mean() <= 0.005 and diff.max() <= 0.04, (diff.mean(), diff.max())
    with torch.inference_mode():
        want = model(pixel_values=torch.from_numpy(reference)).last_hidden_state
        got = model(pixel_values=torch.from_numpy(ours)).last_hidden_state
    assert (got - want).abs().max() <= 2e-2 * want.abs().max()


@pytest.mark.parametrize("class_name,kwargs", [
    ("CLIPImageProcessorPil", {}),  # shortest edge 224, centre crop 224, bicubic, CLIP mean/std
    ("BitImageProcessorPil", {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}}),  # DINOv2
    ("SiglipImageProcessorPil", {}),  # exact 224 x 224, bicubic, 0.5/0.5
    ("VideoMAEImageProcessorPil", {}),  # TimeSformer's and VideoMAE's: shortest edge 224, crop 224, bilinear
    ("VivitImageProcessor", {}),  # shortest edge 256, crop 224, rescaled to [-1, 1] (offset) before 0.5/0.5
], ids=["clip", "dinov2", "siglip", "videomae", "vivit"])
def test_each_processors_numbers_give_its_pixels(tmp_path, class_name, kwargs):
    """FFmpeg's resize + crop and our normalisation, planned from a processor, against that processor (PIL).

    Measured at 320 x 240 -> 224: mean 0.16-0.22 grey levels apart, never more than 1.
    """
    import transformers

    from extract.encoder import input_plan

    processor = getattr(transformers, class_name)(**kwargs)
    preprocess, resize = input_plan(processor, 224, "test")
    path = write_video(tmp_path / "tex.mp4", n=4, size=(320, 240), texture=True)
    frames, _ = SampledVideo(path, Sampling(segments=4), size=resize).read()  # (4, 224, 224, 3)
    with av.open(str(path)) as container:
        full = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    reference = processor(full, return_tensors="np")["pixel_values"].reshape(4, 3, 224, 224)
    encoder = FrozenEncoder(tiny_vit(image_size=224, patch_size=56), "test", preprocess, resize=resize)
    ours = encoder.pixel_values(torch.from_numpy(frames)).numpy()  # (4, 3, 224, 224)
    levels = np.abs(ours - reference) / encoder.scale.numpy()  # in grey levels: one is rescale / std
    assert levels.mean() <= 0.3 and levels.max() <= 1.5, (levels.mean(), levels.max())


def test_local_folder_round_trip(tmp_path):
    """A ViT saved with save_pretrained (+ its processor config) loads by path and gives HF's own tokens."""
    model = tiny_vit()
    model.save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=IMAGENET_MEAN,
                      image_std=IMAGENET_STD).save_pretrained(tmp_path / "vit")
    encoder = load_encoder(str(tmp_path / "vit"))
    assert encoder.preprocess.mean == pytest.approx(tuple(IMAGENET_MEAN))
    assert encoder.attrs() == {"encoder": str(tmp_path / "vit"), "encoder_hash": weights_hash(model), "family": "vit",
                               "image_size": 32, "patch_size": 8, "hidden_size": 32, "grid": [4, 4],
                               "special_tokens": 1, "pool": 1}
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.model.training
    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    tokens = encoder(torch.from_numpy(frames))
    assert tokens.dtype == torch.float16 and tokens.shape == (5, 17, 32) == (5, encoder.tokens_per_item, 32)
    pixel_values = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=IMAGENET_MEAN,
                                     image_std=IMAGENET_STD)(list(frames), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        want = model(pixel_values=pixel_values).last_hidden_state
    torch.testing.assert_close(tokens.float(), want, atol=2e-3, rtol=2e-3)


def test_pooling_keeps_cls_and_averages_the_grid():
    model = tiny_vit()
    plain, pooled = FrozenEncoder(model, "t"), FrozenEncoder(model, "t", pool=2)
    frames = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    with torch.inference_mode():
        hidden = model(pixel_values=plain.pixel_values(frames)).last_hidden_state  # (3, 17, 32)
    got = pooled(frames).float()  # (3, 1 + 4, 32)
    grid = hidden[:, 1:].reshape(3, 4, 4, 32)
    want = torch.stack([grid[:, i : i + 2, j : j + 2].mean((1, 2)) for i in (0, 2) for j in (0, 2)], 1)  # (3, 4, 32)
    torch.testing.assert_close(got[:, 0], hidden[:, 0], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(got[:, 1:], want, atol=2e-3, rtol=2e-3)
    assert pooled.attrs()["grid"] == [2, 2] and pooled.attrs()["pool"] == 2
    with pytest.raises(UserError, match="POOL=3 must divide"):
        FrozenEncoder(model, "t", pool=3)


def test_tiny_random_is_seeded_and_leaves_the_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_random()
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = load_encoder(TINY_RANDOM)
    assert weights_hash(a) == b.weights_hash and b.attrs()["encoder"] == TINY_RANDOM
    with torch.no_grad():
        a.embeddings.patch_embeddings.projection.weight[0, 0, 0, 0] += 1e-3
    assert weights_hash(a) != b.weights_hash


def test_offline_missing_encoder_says_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(UserError) as info:
        load_encoder("google/vit-base-patch16-224-in21k")
    text = str(info.value)
    assert "HF_HUB_OFFLINE" in text and "save_pretrained" in text and "internet" in text
    with pytest.raises(UserError, match="neither a folder nor a hub id"):
        load_encoder(str(tmp_path / "no" / "such" / "folder"))


def test_misspelt_encoder_names_the_closest_before_any_download(tmp_path, monkeypatch):
    """A bare name is a preset or a folder here (hub ids are org/name): a typo is refused at once, never retried."""
    import transformers

    def hub(*args, **kwargs):
        raise AssertionError("the name check let a typo through to the hub")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", hub)
    with pytest.raises(UserError, match=r"ENCODER=vit-tiny-randm is not a preset .* did you mean vit-tiny-random\?"):
        load_encoder("vit-tiny-randm")
    with pytest.raises(UserError, match=r"did you mean google/vit-large-patch16-224-in21k\?"):
        load_encoder("vit-large-patch16-224-in21k")
    with pytest.raises(UserError, match="neither a folder nor a hub id"):
        load_encoder("./models/vit")


def test_library_message_is_kept_to_its_first_whole_sentence():
    from extract.encoder import _first_sentence

    text = ("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the cached "
            "files.\nCheck your internet connection or see how to run the library in offline mode at "
            "'https://huggingface.co/docs/transformers/installation#offline-mode'.")
    assert _first_sentence(text) == ("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't "
                                     "find them in the cached files.")


def test_folder_without_processor_config_says_how_it_normalises(tmp_path):
    from extract.encoder import describe

    tiny_vit().save_pretrained(tmp_path / "vit")  # no preprocessor_config.json beside it
    encoder = load_encoder(str(tmp_path / "vit"))
    assert encoder.preprocess.mean == (0.5, 0.5, 0.5) and encoder.preprocess.std == (0.5, 0.5, 0.5)
    assert "has no preprocessor_config.json: pixels are normalised with ViT's defaults (mean 0.5" in describe(encoder)
    ViTImageProcessor(image_mean=[0.4] * 3, image_std=[0.2] * 3).save_pretrained(tmp_path / "vit")
    encoder = load_encoder(str(tmp_path / "vit"))
    assert encoder.preprocess.mean == (0.4, 0.4, 0.4) and "preprocessor_config" not in describe(encoder)


def test_loading_a_local_folder_prints_nothing_unless_verbose(tmp_path, capsys, monkeypatch):
    """transformers draws a "Loading weights" bar on stderr for every from_pretrained; weights on disk load quietly,
    VERBOSE=1 shows the library's bar again (issue #20, point 10)."""
    tiny_vit().save_pretrained(tmp_path / "vit")
    capsys.readouterr()
    load_encoder(str(tmp_path / "vit"))
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("VERBOSE", "1")
    load_encoder(str(tmp_path / "vit"))
    assert "Loading weights" in capsys.readouterr().err
