"""ImageFolder JPEGs decoded and augmented on the training device, a micro-batch at a time.

The CPU path (PIL decode and torchvision transforms in DataLoader processes) gave 472-853
images/s on a 16-core host, a tenth of what one H100 trains ResNet-50 at. Here the DataLoader
processes only read files' bytes; the trainer's process decodes a whole micro-batch with
`torchvision.io.decode_jpeg(..., device=...)` (nvJPEG on a GPU; libjpeg on a CPU, which is how
the tests run it) and crops, resizes and flips the micro-batch in one `roi_align` call.

Why roi_align and not a per-image RandomResizedCrop loop: a loop launches two kernels per image
(3.7-5.3k images/s measured on an H100 with 500x375 JPEGs, against 20k for the decode alone);
roi_align crops and bilinearly resizes every box of a batch in one kernel, averaging
ceil(box/224) samples per output pixel in each direction (so a downscale is anti-aliased as
torchvision's `antialias=True` resize is, up to the sampling grid).

The crop boxes follow torchvision's RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3, 10 tries,
then a centre crop), drawn from a generator fixed by the micro-batch's place in the run, so a
resumed run augments exactly as the uninterrupted one. Validation is the usual resize to 256/224
of the crop and centre crop, expressed as one box per image.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import Dataset

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)


class EncodedImageFolder(Dataset):
    """An ImageFolder whose items are (the file's bytes as a uint8 tensor, class index)."""

    def __init__(self, root: str | Path):
        import torchvision

        folder = torchvision.datasets.ImageFolder(str(root))
        self.samples: list[tuple[str, int]] = folder.samples
        self.classes: list[str] = folder.classes
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from torchvision.io import read_file

        path, label = self.samples[index]
        return read_file(path), label


Packed = tuple[torch.Tensor, torch.Tensor]  # all files' bytes end to end, and their lengths


def collate_encoded(items: list[tuple[torch.Tensor, int]]) -> tuple[Packed, torch.Tensor]:
    """The files of a micro-batch packed into one tensor (one shared-memory block to pass
    between processes: a tensor per file exhausted the file descriptors), and the labels."""
    files = [data for data, _ in items]
    packed = (torch.cat(files), torch.tensor([len(f) for f in files]))
    return packed, torch.tensor([label for _, label in items])


def unpack(packed: Packed) -> list[torch.Tensor]:
    """The files of a packed micro-batch."""
    data, lengths = packed
    return list(data.split(lengths.tolist()))


def decode(files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """RGB uint8 (3, H, W) images on `device`, decoded in one batched call where possible.

    A file the batched JPEG decoder refuses (a PNG or CMYK file named .JPEG, as a few ImageNet
    files are) is decoded on its own by `decode_image` on the CPU and moved.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    target = "cuda" if device.type == "cuda" else "cpu"
    try:
        images = decode_jpeg(files, mode=ImageReadMode.RGB, device=target)
    except RuntimeError:
        images = [_decode_one(f, target) for f in files]
    return [image.to(device, non_blocking=True) for image in images]


def _decode_one(data: torch.Tensor, device: str) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return decode_image(data, mode=ImageReadMode.RGB)


def random_resized_boxes(sizes: list[tuple[int, int]], generator: torch.Generator) -> torch.Tensor:
    """(N, 4) crop boxes x1, y1, x2, y2 drawn as torchvision's RandomResizedCrop draws them."""
    boxes = []
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for height, width in sizes:
        area = height * width
        for _ in range(10):
            draws = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
            target = area * (SCALE[0] + (SCALE[1] - SCALE[0]) * draws[0])
            ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
            w = int(round(math.sqrt(target * ratio)))
            h = int(round(math.sqrt(target / ratio)))
            if 0 < w <= width and 0 < h <= height:
                top = int(draws[2] * (height - h + 1))
                left = int(draws[3] * (width - w + 1))
                boxes.append((left, top, left + w, top + h))
                break
        else:  # torchvision's fallback: the central crop at the nearest allowed ratio
            ratio = width / height
            if ratio < RATIO[0]:
                w, h = width, int(round(width / RATIO[0]))
            elif ratio > RATIO[1]:
                h, w = height, int(round(height * RATIO[1]))
            else:
                w, h = width, height
            top, left = (height - h) // 2, (width - w) // 2
            boxes.append((left, top, left + w, top + h))
    return torch.tensor(boxes, dtype=torch.float32)


def centre_boxes(sizes: list[tuple[int, int]], resize: int, crop: int) -> torch.Tensor:
    """(N, 4) boxes equal to resizing the short side to `resize` and cropping `crop` x `crop`
    from the centre."""
    boxes = []
    for height, width in sizes:
        side = min(height, width) * crop / resize
        top, left = (height - side) / 2, (width - side) / 2
        boxes.append((left, top, left + side, top + side))
    return torch.tensor(boxes, dtype=torch.float32)


def crop_resize(images: list[torch.Tensor], boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Every image's box resized to `size` x `size`, as one float batch (N, 3, size, size).

    The images are laid side by side on one canvas as high as the highest (ImageNet's images are
    at most about 500 px high, so the canvas holds little padding) and roi_align reads every box
    from it in one call.
    """
    from torchvision.ops import roi_align

    device = images[0].device
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    height = max(image.shape[1] for image in images)
    offsets, width = [], 0
    for image in images:
        offsets.append(width)
        width += image.shape[2]
    canvas = torch.zeros(1, 3, height, width, device=device, dtype=dtype)
    for image, left in zip(images, offsets, strict=True):
        canvas[0, :, : image.shape[1], left : left + image.shape[2]] = image
    shift = torch.tensor(offsets, dtype=torch.float32)[:, None]
    rois = torch.cat(
        [
            torch.zeros(len(images), 1),
            boxes[:, 0:1] + shift,
            boxes[:, 1:2],
            boxes[:, 2:3] + shift,
            boxes[:, 3:4],
        ],
        dim=1,
    ).to(device=device, dtype=dtype)
    return roi_align(canvas, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def normalise(batch: torch.Tensor) -> torch.Tensor:
    """uint8-range floats to ImageNet-standardised float32."""
    mean = torch.tensor(MEAN, device=batch.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=batch.device).view(1, 3, 1, 1) * 255
    return (batch.float() - mean) / std


def train_batch(
    files: list[torch.Tensor] | Packed,
    size: int,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Decode, RandomResizedCrop, horizontal flip and standardise one micro-batch."""
    images = decode(unpack(files) if isinstance(files, tuple) else files, device)
    sizes = [(int(i.shape[1]), int(i.shape[2])) for i in images]
    boxes = random_resized_boxes(sizes, generator)
    flip = (torch.rand(len(images), generator=generator) < 0.5).to(device)
    batch = crop_resize(images, boxes, size)
    batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    return normalise(batch)


def val_batch(files: list[torch.Tensor] | Packed, size: int, device: torch.device) -> torch.Tensor:
    """Decode, resize to size*8/7 and centre-crop `size`, standardise."""
    images = decode(unpack(files) if isinstance(files, tuple) else files, device)
    sizes = [(int(i.shape[1]), int(i.shape[2])) for i in images]
    return normalise(crop_resize(images, centre_boxes(sizes, size * 8 // 7, size), size))
