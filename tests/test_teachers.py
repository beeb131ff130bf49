"""Frozen teachers: EfficientNet-Lite offline, tiny random DINOv2 / SigLIP(2) through the real
local loading code, error messages, the privileged upper bound, and the target averaging rule."""

import importlib.util

import pytest
import torch

from repwam.errors import RepwamError
from repwam.tokenizer import (
    PrivilegedEncoder,
    available_teachers,
    build_teacher,
    build_teacher_from_spec,
    compute_targets,
    describe_layers,
    teacher_spec,
    teacher_targets,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine: 1 thread is far faster under contention
    yield
    torch.set_num_threads(n)


def frames(n, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


# ---- EfficientNet-Lite ----


@pytest.fixture(scope="module")
def effnet():
    return build_teacher("efficientnet-lite0")


def test_efficientnet_lite0_offline_features(effnet):
    assert effnet.name == "efficientnet-lite0" and effnet.layer == "stage5" and effnet.dim == 112
    x = frames(3)
    f = effnet(x)
    assert f.shape == (3, 112, 14, 14)  # 64 px -> 224 px input, stride 16
    assert not f.requires_grad and torch.isfinite(f).all()
    assert f.std() > 0.5  # non-trivial features
    assert (f[0] - f[1]).abs().mean() > 0.1 * f.abs().mean()  # different images, different features
    assert torch.equal(effnet(x), f)  # deterministic, frozen
    effnet.train()
    assert not effnet.training and all(not p.requires_grad for p in effnet.parameters())


def test_efficientnet_layer_choice_and_description():
    t = build_teacher("efficientnet-lite0", layer="stride8", input_size=None)
    assert t.layer == "stage3" and t.dim == 40
    assert t(frames(2)).shape == (2, 40, 8, 8)  # native 64 px, stride 8
    text = describe_layers()
    for name in ("stem", "stage1", "stage5", "stage7", "head", "default 'stage5'"):
        assert name in text
    with pytest.raises(RepwamError, match="available"):
        build_teacher("efficientnet-lite0", layer="stage9")


def test_spec_roundtrip(effnet):
    spec = teacher_spec(effnet)
    assert spec["name"] == "efficientnet-lite0" and spec["layer"] == "stage5" and "path" in spec
    again = build_teacher_from_spec(spec)
    assert again.dim == effnet.dim and teacher_spec(again) == spec
    assert teacher_spec(None) == {"name": "none"} and build_teacher("none") is None


def test_compute_targets_on_clips(effnet):
    clips = torch.stack([frames(5, seed=1), frames(5, seed=2)])  # (2, 5, 3, 64, 64)
    t = compute_targets(effnet, clips, latent_grid=(8, 8), chunk=4)
    assert t.shape == (2, 2, 64, 112)


# ---- transformers teachers, tiny random models through the same local loading code ----


def test_dinov2_from_local_dir(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=8)
    torch.manual_seed(0)
    ref = Dinov2Model(cfg).eval()
    ref.save_pretrained(tmp_path)
    t = build_teacher("dinov2", path_or_id=tmp_path)
    assert t.dim == 32 and t.input_size == 64
    x = frames(2)
    f = t(x)
    assert f.shape == (2, 32, 8, 8)
    # patch tokens (CLS dropped), row-major, ImageNet-normalised input
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        tok = ref(pixel_values=((x + 1) / 2 - mean) / std).last_hidden_state[:, 1:]
    assert torch.allclose(f.flatten(2).transpose(1, 2), tok, atol=1e-5)
    assert teacher_spec(t)["path"] == str(tmp_path)


def test_dinov2_with_registers_drops_register_tokens(tmp_path):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    cfg = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    image_size=64, patch_size=8, num_register_tokens=4)
    Dinov2WithRegistersModel(cfg).save_pretrained(tmp_path)
    assert build_teacher("dinov2", path=tmp_path)(frames(1)).shape == (1, 32, 8, 8)


def test_siglip_vision_and_full_checkpoints(tmp_path):
    from transformers import SiglipConfig, SiglipModel, SiglipVisionConfig, SiglipVisionModel

    vis = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64,
               patch_size=8)
    SiglipVisionModel(SiglipVisionConfig(**vis)).save_pretrained(tmp_path / "vision")
    t = build_teacher("siglip2", path_or_id=tmp_path / "vision")
    assert t.dim == 32 and t(frames(2)).shape == (2, 32, 8, 8)
    # a full SigLIP (text + vision) checkpoint: the vision tower is taken out of it
    text = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    SiglipModel(SiglipConfig(text_config=text, vision_config=vis)).save_pretrained(tmp_path / "full")
    assert build_teacher("siglip", path_or_id=tmp_path / "full")(frames(1)).shape == (1, 32, 8, 8)
    # another input size interpolates the position embeddings
    assert build_teacher("siglip", path_or_id=tmp_path / "vision", input_size=96)(frames(1)).shape == (1, 32, 12, 12)


def test_siglip2_naflex_from_local_dir(tmp_path):
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    cfg = Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              num_patches=64, patch_size=8)
    Siglip2VisionModel(cfg).save_pretrained(tmp_path)
    t = build_teacher("siglip2", path_or_id=tmp_path)
    assert t.input_size == 64
    f = t(frames(2))
    assert f.shape == (2, 32, 8, 8) and torch.isfinite(f).all()


def test_missing_local_weights_say_what_to_download(tmp_path):
    with pytest.raises(RepwamError) as e:
        build_teacher("dinov2", path_or_id=tmp_path / "nothing-here")
    msg = str(e.value)
    assert "hf download facebook/dinov2-small" in msg and "--teacher-path DIR" in msg
    with pytest.raises(RepwamError, match="hf download repwam-test/not-in-cache"):
        build_teacher("siglip2", path_or_id="repwam-test/not-in-cache")


def test_unknown_teacher_lists_names():
    with pytest.raises(RepwamError) as e:
        build_teacher("clip-xl")
    for name in ("efficientnet-lite0", "dinov2", "siglip2", "pe-core", "privileged", "none"):
        assert name in str(e.value) and name in available_teachers()


def test_pe_core_needs_timm():
    if importlib.util.find_spec("timm") is None:
        with pytest.raises(RepwamError, match=r"repwam\[timm\]"):
            build_teacher("pe-core")
        return
    timm = pytest.importorskip("timm")
    pytest.skip(f"timm {timm.__version__} present: PE-Core weights must be local (not tested here)")


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="needs timm")
def test_pe_core_from_local_file(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    name = "vit_pe_core_base_patch16_224"
    model = timm.create_model(name, pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    t = build_teacher("pe-core", path_or_id=tmp_path, model_name=name)
    assert t(frames(1)).shape == (1, t.dim, 14, 14)


# ---- privileged upper bound ----


def square_scenes(n, seed=0):
    """64x64 uint8 images with a bright 10x10 square; target = its centre (x, y)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(5, 59, (n, 2), generator=g)
    imgs = torch.zeros(n, 64, 64, 3, dtype=torch.uint8)
    for i, (x, y) in enumerate(xy.tolist()):
        imgs[i, y - 5 : y + 5, x - 5 : x + 5] = 255
    return imgs.numpy(), xy.float().numpy()


def test_privileged_fit_save_load(tmp_path):
    imgs, xy = square_scenes(64)
    enc = PrivilegedEncoder.fit(imgs, xy, steps=60, batch_size=32, dim=32, lr=3e-3)
    assert enc.fit_history[-1] < 0.5 * enc.fit_history[0]
    enc.save(tmp_path / "priv")
    t = build_teacher("privileged", path=tmp_path / "priv")
    assert t.name == "privileged" and t.dim == 32
    x = torch.from_numpy(imgs[:4]).permute(0, 3, 1, 2).float() / 127.5 - 1
    f = t(x)
    assert f.shape == (4, 32, 8, 8)
    with torch.no_grad():
        assert torch.allclose(f, enc.features(x), atol=1e-6)
    assert teacher_spec(t)["path"] == str(tmp_path / "priv")
    with pytest.raises(RepwamError, match="PrivilegedEncoder.save"):
        build_teacher("privileged", path=tmp_path / "missing")


# ---- targets on the latent grid ----


def test_teacher_targets_averaging_rule():
    b, t, c, h, w = 2, 9, 2, 4, 4
    feats = torch.zeros(b, t, c, h, w)
    feats[:, :, 0] = torch.arange(t, dtype=torch.float).view(1, t, 1, 1)  # channel 0 = frame index
    feats[:, :, 1] = torch.arange(h, dtype=torch.float).view(1, 1, h, 1)  # channel 1 = row index
    out = teacher_targets(feats, latent_grid=(2, 2))
    assert out.shape == (2, 3, 4, 2)  # (B, T', L, C)
    # latent 0 = frame 0; latent 1 = mean(frames 1..4) = 2.5; latent 2 = mean(5..8) = 6.5
    assert torch.allclose(out[..., 0], torch.tensor([0.0, 2.5, 6.5]).view(1, 3, 1).expand(2, 3, 4))
    # area pooling of rows {0,1} -> 0.5 and {2,3} -> 2.5, tokens row-major
    assert torch.allclose(out[..., 1], torch.tensor([0.5, 0.5, 2.5, 2.5]).expand(2, 3, 4))
    # a single image and upsampling to a finer grid
    assert teacher_targets(feats[:, :1], latent_grid=(8, 8)).shape == (2, 1, 64, 2)
    with pytest.raises(RepwamError, match="1 \\+ 4k"):
        teacher_targets(feats[:, :6], latent_grid=(2, 2))


def test_fit_privileged_teacher_on_a_dataset(tmp_path, tiny_dataset):
    """`repwam train teacher`: fitted on the training split's simulator state only, saved where the tokenizer's
    --teacher-path loads it, with held-out R² per probe group; a dataset without the state is a clear error."""
    from repwam.data.dataset import split_episodes
    from repwam.data.lerobot import LeRobotDataset
    from repwam.train.teacher import fit_privileged_teacher

    report = fit_privileged_teacher([tiny_dataset], tmp_path / "priv", steps=30, batch_size=16, frame_stride=4,
                                    progress=False)
    ds = LeRobotDataset(tiny_dataset)
    val = split_episodes([ds], "val", 0.1)
    assert report["val_frames"] == sum(len(range(0, ds.episode_length(e), 4)) for _, e in val)
    assert report["train_frames"] + report["val_frames"] == sum(len(range(0, ds.episode_length(e), 4))
                                                                for e in range(ds.num_episodes))
    assert set(report["val_r2"]) == {"hand", "gripper", "object", "goal"}
    assert report["split"]["val_episodes"]  # the split it was fitted on is recorded
    t = build_teacher("privileged", path=tmp_path / "priv")
    assert t(torch.zeros(2, 3, 64, 64)).shape == (2, t.dim, 8, 8)
    from conftest import video_only_copy

    no_state = video_only_copy(tiny_dataset, tmp_path / "video_only")
    with pytest.raises(RepwamError, match="observation.environment_state"):
        fit_privileged_teacher([no_state], tmp_path / "priv2", steps=2, progress=False)
