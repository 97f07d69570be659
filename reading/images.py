"""Opening a picture safely and reading it as grey levels.
"""
import contextlib
import os
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from reading.errors import ImageNotFoundError, NoDigitError, NotAnImageError

# Larger inputs are shrunk to this long side before any work: a digit needs far fewer pixels than
# a 48-megapixel photo has, and this bounds time and memory whatever the camera.
MAX_SIDE = 1024


def open_image(image, with_scale=False):
    """The image as a loaded PIL image, upright (EXIF orientation applied), at most MAX_SIDE
    on its long side (and, with_scale, how many original pixels one of its pixels spans).
    Raises ImageNotFoundError or NotAnImageError naming the path, or NoDigitError for a picture
    under 3 pixels on a side."""
    if isinstance(image, Image.Image):
        img, path = image, "the image"
    else:
        path = os.fspath(image)
        if not os.path.exists(path):
            broken = os.path.islink(path)
            raise ImageNotFoundError(f"No such image: {path}" + (" (a link to nothing)." if broken else "."))
        if os.path.isdir(path):
            raise NotAnImageError(f"{path} is a folder, not an image.")
        if not os.path.isfile(path):  # a pipe or a device would keep Pillow waiting or reading
            raise NotAnImageError(f"{path} is not a regular file, so not an image file.")
        img = open_file(path, path)
    source = img
    try:
        if img.format != "JPEG":
            # Decoded before EXIF is looked for: a PNG keeps it after the pixels, and looking
            # decodes them with any error swallowed, leaving a half-decoded picture behind.
            img.load()
        full_size = _upright_size(img)
        # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: a huge photo never fills memory.
        if img.format == "JPEG":
            img.draft(img.mode, (MAX_SIDE, MAX_SIDE))
        img.load()
        img = _upright(img)
        if max(img.size) > MAX_SIDE:
            # resize, not thumbnail: a caller's own PIL image must not be shrunk in place.
            shrink = MAX_SIDE / max(img.size)
            img = _standard_mode(img).resize(
                (max(1, round(img.width * shrink)), max(1, round(img.height * shrink))),
                Image.Resampling.BOX)
    except Exception as error:  # Pillow's decoders raise many types on damaged files
        if source is not image:
            source.close()
        raise NotAnImageError(f"{path} could not be decoded: the file is truncated or "
                              f"corrupt.") from error
    if source is not image and getattr(source, "n_frames", 1) > 1:
        # The first frame of an animation or a multi-page scan; the file is not kept open.
        img = img.copy() if img is source else img
        source.close()
    if min(full_size) < 3:
        raise NoDigitError(f"No digit found in {path}: the image is only "
                           f"{full_size[0]}x{full_size[1]} pixels.")
    return (img, max(full_size) / max(img.size)) if with_scale else img


def open_file(source, name):
    """Image.open(source), a path or a file object, with its failures as NotAnImageError
    naming name. Pillow refuses pictures of more than twice its MAX_IMAGE_PIXELS and only warns
    below that; those are refused too, unless they are JPEG, which open_image decodes at a
    fraction of their size: decoding one whole takes gigabytes and seconds."""
    try:
        with _quiet():
            img = Image.open(source)
    except UnidentifiedImageError as error:
        raise NotAnImageError(f"{name} is not an image file Pillow can read.") from error
    except Image.DecompressionBombError as error:
        raise NotAnImageError(f"{name} has too many pixels to open safely "
                              f"(Pillow's decompression-bomb guard).") from error
    except OSError as error:
        raise NotAnImageError(f"{name} could not be opened as an image ({error}).") from error
    limit = Image.MAX_IMAGE_PIXELS
    width, height = img.size
    if limit and img.format != "JPEG" and width * height > limit:
        img.close()
        raise NotAnImageError(f"{name} has too many pixels to open safely ({width}x{height}; "
                              f"Pillow's decompression-bomb guard allows {limit}).")
    return img


# warnings.catch_warnings() swaps the process's warning filters in and out: two threads inside it
# at once (predict.py reads a folder with a pool of threads) could leave them swapped for good.
_FILTERS = threading.Lock()


@contextlib.contextmanager
def _quiet():
    """Pillow's warnings silenced for a moment (their news is in the sentence raised, if any)."""
    with _FILTERS, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _upright_size(img):
    # The size before any draft decoding, turned as EXIF orientation 5-8 turns the picture.
    try:
        with _quiet():
            turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:
        turned = False
    return img.size[::-1] if turned else img.size


def _upright(img):
    # A broken EXIF block must not cost the user the prediction (nor print Pillow's warning
    # about it): keep the image as stored.
    try:
        with _quiet():
            return ImageOps.exif_transpose(img)
    except Exception:
        return img


def _standard_mode(img):
    # Palette, 1-bit and CMYK images do not resize smoothly (palette ones fall back to nearest
    # neighbour), so they are first brought to one of the modes handled below.
    if img.mode in ("L", "LA", "RGB", "RGBA", "I", "F") or img.mode.startswith("I;16"):
        return img.convert("I") if img.mode.startswith("I;16") else img
    if img.mode == "P" and "transparency" in img.info or img.mode in ("PA", "La", "RGBa"):
        return img.convert("RGBA")
    if img.mode == "1":
        return img.convert("L")
    return img.convert("RGB")


def read_grey(image):
    """Grey levels in [0, 1] as a float32 array, transparency flattened.

    A drawing exported from a canvas is strokes on a fully transparent background; whatever colour
    the transparent pixels happen to store is meaningless, so the image is laid on a background
    that contrasts with its strokes (white under dark strokes, black under light ones)."""
    img = _standard_mode(open_image(image))
    alpha = None
    if img.mode in ("LA", "RGBA"):
        alpha = np.asarray(img.getchannel("A"), dtype=np.float32) / 255
        img = img.convert("L" if img.mode == "LA" else "RGB")
        if alpha.min() >= 1:
            alpha = None
    if img.mode == "RGB":
        img = img.convert("L")
    grey = np.asarray(img, dtype=np.float32)
    if img.mode in ("I", "F"):
        grey = np.nan_to_num(grey, nan=0.0, posinf=0.0, neginf=0.0)  # a float TIFF may hold them
        # 16- and 32-bit images: scale by the range the values actually use (8 or 16 bits).
        top = grey.max()
        grey = grey / (65535.0 if top > 255 else 255.0 if top > 1 else 1.0)
    else:
        grey = grey / 255.0
    if alpha is not None:
        weight = alpha.sum()
        stroke_level = float((grey * alpha).sum() / weight) if weight > 0 else 0.0
        background = 1.0 if stroke_level < 0.5 else 0.0
        grey = grey * alpha + background * (1 - alpha)
    return np.clip(grey, 0.0, 1.0)
