"""Every published ImageNet checkpoint of ShuffleNet v1 this package reads:
where it is, its hash as the source publishes it, the accuracy the source
reports, how it evaluated, and which entry `weights="imagenet"` picks.

An entry is named `<variant>.<source>`, e.g. `shufflenet_1.0x_g3.mmpretrain`
(timm's `architecture.tag`). For each variant, `"imagenet"` picks the most
accurate entry that downloads; where none does (the official release's
1.5x, 2x and 0.5x g=8 are on OneDrive and BaiduYun only), the most
accurate one, whose file the user puts in the cache by hand.
"""

import dataclasses
import types

from keras_shufflenet.models.naming import parse_variant_name
from keras_shufflenet.models.naming import variant_name

IMAGENET = "imagenet"
IMAGENET_CLASSES = 1000
IMAGENET_INPUT_SIZE = (224, 224)

OFFICIAL_DOWNLOAD_PAGE = (
    "https://1drv.ms/f/s!AgaP37NGYuEXhRfQxHRseR7eSxXo (OneDrive; BaiduYun: "
    "https://pan.baidu.com/s/1EUQVoFPb74yZm0JWHKjFOw, code mc24)"
)
PYTORCHCV_RELEASES = "https://github.com/osmr/imgclsmob/releases/download"
MMPRETRAIN_DOWNLOADS = (
    "https://download.openmmlab.com/mmclassification/v0/shufflenet_v1"
)

# How each source evaluated its figures on ImageNet val (its own code):
# `resize_to` is the shorter side before the centre crop, `antialias`
# whether the resize filters as PIL does (cv2's INTER_LINEAR does not).
EVALUATION = types.MappingProxyType(
    {
        "official": types.MappingProxyType(
            {"resize_to": 256, "crop": 224, "interpolation": "bilinear",
             "antialias": False,
             "text": "shorter side to 256 with OpenCV's INTER_LINEAR, "
                     "centre crop 224 (ShuffleNetV1/train.py)"}
        ),
        "mmpretrain": types.MappingProxyType(
            {"resize_to": 256, "crop": 224, "interpolation": "bilinear",
             "antialias": True,
             "text": "shorter side to 256 with Pillow's bilinear, centre "
                     "crop 224 (imagenet_bs64_pil_resize.py)"}
        ),
        "pytorchcv": types.MappingProxyType(
            {"resize_to": 256, "crop": 224, "interpolation": "bilinear",
             "antialias": True,
             "text": "shorter side to 256 (224 / 0.875) with Pillow's "
                     "bilinear, centre crop 224 (imgclsmob)"}
        ),
    }
)
LICENCES = types.MappingProxyType(
    {"official": "MIT", "mmpretrain": "Apache-2.0", "pytorchcv": "MIT"}
)


@dataclasses.dataclass(frozen=True)
class PretrainedEntry:
    """One published checkpoint.

    Attributes:
        name: `<variant>.<source>`, passed as `ShuffleNet(weights=name)`.
        scale: Width multiplier.
        groups: Groups.
        source: Key of `weights.sources.SOURCES`.
        filename: The file as the source ships it.
        url: Its direct download URL, or None (download it by hand from
            `page`).
        page: Where the source publishes it.
        hash_algorithm: `"sha256"` or `"sha1"`, as the source publishes.
        file_hash: The hex digest the source publishes, or its first
            characters where it publishes only those (mmpretrain's file
            names end in the first 8 of the sha256); None when the source
            publishes none.
        hashed_member: For a zip the source hashes inside of (pytorchcv
            publishes the unzipped `.pth`'s sha1), that member's name.
        sha256: The full sha256 of the file, once a maintainer has it.
        top1: Top-1 accuracy on ImageNet val (%), as the source reports.
        top5: Top-5 accuracy (%), as the source reports.
        mflops: Multiply-adds at 224x224 (millions), counted by
            `models.complexity` on the converted model.
        params: Learned parameters, counted the same way.
    """

    name: str
    scale: float
    groups: int
    source: str
    filename: str
    url: str | None
    page: str
    hash_algorithm: str
    file_hash: str | None
    top1: float
    top5: float
    mflops: float
    params: int
    hashed_member: str | None = None
    sha256: str | None = None

    @property
    def variant(self):
        return variant_name(self.scale, self.groups)

    @property
    def evaluation(self):
        return EVALUATION[self.source]

    @property
    def licence(self):
        return LICENCES[self.source]


def _pytorchcv(name, scale, groups, top1_error, top5_error, sha1, tag,
               mflops, params):
    # model_store.py: <name>-<top-5 error in 0.01%>-<sha1[:8]>.pth.zip.
    member = f"{name}-{round(top5_error * 100):04d}-{sha1[:8]}.pth"
    return PretrainedEntry(
        name=f"{variant_name(scale, groups)}.pytorchcv", scale=scale,
        groups=groups, source="pytorchcv", filename=f"{member}.zip",
        url=f"{PYTORCHCV_RELEASES}/{tag}/{member}.zip",
        page="https://github.com/osmr/pytorchcv (model_metainfos.csv)",
        hash_algorithm="sha1", file_hash=sha1, hashed_member=member,
        top1=round(100 - top1_error, 2), top5=round(100 - top5_error, 2),
        mflops=mflops, params=params,
    )


def _official(scale, groups, top1_error, top5_error, mflops, params):
    # The release's folder names its group-8 files differently
    # (ZJCV/ZCls's converter reads them from there).
    filename = (
        f"{scale}x.pth.tar" if groups == 3
        else f"snetv1_group8_{scale}x.pth.tar"
    )
    return PretrainedEntry(
        name=f"{variant_name(scale, groups)}.official", scale=scale,
        groups=groups, source="official", filename=filename, url=None,
        page=f"{OFFICIAL_DOWNLOAD_PAGE}, folder ShuffleNetV1/Group{groups}/"
             "models",
        hash_algorithm="sha256", file_hash=None,
        top1=round(100 - top1_error, 2), top5=round(100 - top5_error, 2),
        mflops=mflops, params=params,
    )


_ENTRIES = (
    PretrainedEntry(
        name="shufflenet_1.0x_g3.mmpretrain", scale=1.0, groups=3,
        source="mmpretrain",
        filename="shufflenet_v1_batch1024_imagenet_20200804-5d6cec73.pth",
        url=f"{MMPRETRAIN_DOWNLOADS}/"
            "shufflenet_v1_batch1024_imagenet_20200804-5d6cec73.pth",
        page="https://github.com/open-mmlab/mmpretrain "
             "(configs/shufflenet_v1/metafile.yml)",
        hash_algorithm="sha256", file_hash="5d6cec73",
        top1=68.13, top5=87.81, mflops=137.5, params=1_865_728,
    ),
    # pytorchcv's README: top-1 and top-5 error (%), sha1 and release tag
    # from model_metainfos.csv.
    _pytorchcv("shufflenet_g1_w1", 1.0, 1, 34.93, 13.89,
               "4cfb65a30761fe548e0b5afbb5d89793ec41e4e9", "v0.0.223",
               143.1, 1_531_936),
    _pytorchcv("shufflenet_g2_w1", 1.0, 2, 34.25, 13.63,
               "07256203e217a7b31f1c69a5bd38a6674bce75bc", "v0.0.241",
               140.8, 1_733_848),
    _pytorchcv("shufflenet_g3_w1", 1.0, 3, 34.39, 13.48,
               "ce54f64ecff87556a4303380f46abaaf649eb308", "v0.0.244",
               137.5, 1_865_728),
    _pytorchcv("shufflenet_g4_w1", 1.0, 4, 34.19, 13.35,
               "e2415f8270a4b6cbfe7dc97044d497edbc898577", "v0.0.245",
               134.3, 1_968_344),
    _pytorchcv("shufflenet_g8_w1", 1.0, 8, 34.06, 13.42,
               "9a979b365424addba75c559a61a77ac7154b26eb", "v0.0.250",
               138.4, 2_434_768),
    _pytorchcv("shufflenet_g1_w3d4", 0.75, 1, 39.58, 17.11,
               "161cd24aa0b2e2afadafa69b44a28af222f2ec7a", "v0.0.218",
               82.5, 975_214),
    _pytorchcv("shufflenet_g3_w3d4", 0.75, 3, 38.20, 16.50,
               "3f3b0aef0ce3174c78ff42cf6910c6e34540fc41", "v0.0.219",
               79.7, 1_238_266),
    _pytorchcv("shufflenet_g1_wd2", 0.5, 1, 46.59, 22.61,
               "dae4bdadd7d48bee791dff2a08cd697cff0e9320", "v0.0.174",
               38.5, 534_484),
    _pytorchcv("shufflenet_g3_wd2", 0.5, 3, 44.16, 20.80,
               "ccaacfc8d9ac112c6143269df6e258fd55b662a7", "v0.0.167",
               37.6, 718_324),
    _pytorchcv("shufflenet_g1_wd4", 0.25, 1, 62.44, 37.29,
               "47dbd0f279da6d3056079bb79ad39cabbb3b9415", "v0.0.134",
               11.0, 209_746),
    _pytorchcv("shufflenet_g3_wd4", 0.25, 3, 61.74, 36.53,
               "6abdd65e087e71f80345415cdf7ada6ed2762d60", "v0.0.135",
               11.0, 305_902),
    # The release's results table (ShuffleNetV1/README.md): top-1 and top-5
    # error (%).
    _official(0.5, 3, 42.7, 20.0, 37.6, 717_324),
    _official(1.0, 3, 32.2, 12.3, 137.5, 1_864_728),
    _official(1.5, 3, 28.4, 9.8, 292.4, 3_441_168),
    _official(2.0, 3, 25.9, 8.6, 524.0, 5_449_776),
    _official(0.5, 8, 41.2, 19.0, 40.5, 1_010_448),
    _official(1.0, 8, 32.0, 13.6, 138.4, 2_433_768),
    _official(1.5, 8, 29.0, 10.4, 290.2, 4_268_952),
    _official(2.0, 8, 27.1, 9.2, 521.9, 6_521_232),
)
REGISTRY = types.MappingProxyType({e.name: e for e in _ENTRIES})


def evaluation_settings(entry):
    """The `InputConfig` fields that evaluate as `entry`'s source did.

    Returns:
        A dict of `image_size`, `crop_fraction`, `eval_resize_first` and
        `eval_antialias`.
    """
    evaluation = entry.evaluation
    return {
        "image_size": evaluation["crop"],
        "crop_fraction": evaluation["crop"] / evaluation["resize_to"],
        "eval_resize_first": True,
        "eval_antialias": evaluation["antialias"],
    }


def imagenet_entry(scale, groups):
    """The entry `weights="imagenet"` picks for a variant, or None.

    The most accurate entry that downloads by itself; where none does,
    the most accurate one.
    """
    candidates = [
        e for e in REGISTRY.values()
        if (e.scale, e.groups) == (float(scale), groups)
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda e: (e.url is not None, e.top1))


def variants_with_weights():
    """`shufflenet_<scale>x_g<groups>` of every variant with an entry."""
    return sorted({e.variant for e in REGISTRY.values()})


def find_entry(name, scale, groups):
    """The entry `weights=name` means for `ShuffleNet(scale, groups)`.

    Raises:
        ValueError: An unknown name (the message lists the names), an
            entry for another variant, or `"imagenet"` for a variant
            without any (the message lists the variants with one).
    """
    if name == IMAGENET:
        entry = imagenet_entry(scale, groups)
        if entry is None:
            raise ValueError(
                f"weights='imagenet': no published ImageNet checkpoint of "
                f"ShuffleNet {float(scale)}x with groups={groups}. These "
                f"variants have one: {', '.join(variants_with_weights())}."
            )
        return entry
    if name not in REGISTRY:
        raise ValueError(
            f"Unknown pretrained weights {name!r}. Known: 'imagenet' and "
            f"{', '.join(sorted(REGISTRY))}; or the path of a checkpoint, "
            ".weights.h5 or .keras file."
        )
    entry = REGISTRY[name]
    if (float(scale), groups) != (entry.scale, entry.groups):
        raise ValueError(
            f"weights={name!r} are for scale={entry.scale}, "
            f"groups={entry.groups}. Received: scale={scale}, "
            f"groups={groups}"
        )
    return entry


def pretrained_weights():
    """The table of every pretrained entry, as the README shows it.

    Returns:
        A list of dicts, one per entry, sorted by variant then top-1:
        `name`, `variant`, `source`, `imagenet` (whether `"imagenet"`
        picks it), `top1`, `top5` (%, as the source reports), `mflops`,
        `params`, `licence`, `evaluation` (how the source evaluated),
        `download` (`"direct"` or `"by hand"`) and `url` or `page`.
    """
    rows = []
    entries = sorted(
        REGISTRY.values(), key=lambda e: (e.scale, e.groups, -e.top1)
    )
    for entry in entries:
        variant = parse_variant_name(entry.variant)
        rows.append(
            {
                "name": entry.name,
                "variant": entry.variant,
                "source": entry.source,
                "imagenet": imagenet_entry(
                    variant["scale"], variant["groups"]
                ) is entry,
                "top1": entry.top1,
                "top5": entry.top5,
                "mflops": entry.mflops,
                "params": entry.params,
                "licence": entry.licence,
                "evaluation": entry.evaluation["text"],
                "download": "direct" if entry.url else "by hand",
                "url": entry.url or entry.page,
            }
        )
    return rows
