"""Which pixels of a picture are ink: the picture's Ink, with specks, ruled lines, frames and the
table around a photographed sheet left out.
"""
import os
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage

from reading.errors import NoDigitError
from reading.images import open_image, read_grey
from reading.paper import (
    drop_rule_families,
    is_dark_ink,
    otsu_threshold,
    paper_level,
    printed_boxes,
    remove_background,
    sample,
    shade_free,
    to_ink_polarity,
)

EIGHT_CONNECTED = np.ones((3, 3), bool)
FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


class Ink(NamedTuple):
    """A picture's ink: levels (float32, bright ink on 0, the background removed), mask (bool,
    the pixels that are ink), scale (pixels of the original picture per pixel here), name, and
    pieces, label_pieces(mask) when it is already known (None otherwise)."""
    levels: np.ndarray
    mask: np.ndarray
    scale: float
    name: str
    pieces: tuple = None


def read_ink(image):
    """The picture's Ink: read as grey levels, paper and lighting removed, ink made bright, the
    ink pixels found. Ink scattered in more than MAX_PIECES pieces is noise or a texture, not
    handwriting: NoDigitError, as for a blank picture."""
    name = "the image" if isinstance(image, Image.Image) else os.fspath(image)
    img, scale = open_image(image, with_scale=True)
    grey = read_grey(img)
    residual = remove_background(grey)
    dark = is_dark_ink(residual)
    levels = to_ink_polarity(residual, dark)
    try:
        mask, pieces = _find_ink(levels, name)
    except NoDigitError:
        # A bold digit filling the picture leaves the paper only in the corners, and a curved
        # lighting surface can bend to follow the ink itself; a flat paper level cannot.
        levels = to_ink_polarity(grey - paper_level(grey))
        mask, pieces = _find_ink(levels, name)
    levels, mask, pieces = _out_of_shadow(grey, (levels, mask, pieces), dark, name)
    if pieces[1] > MAX_PIECES:
        raise NoDigitError(f"No digit found in {name}: its ink lies in {pieces[1]} separate pieces, "
                           f"as in noise or a texture, not in handwriting.")
    return Ink(levels, mask, scale, name, pieces)


def one_digit_mask(ink):
    """The mask of the ink read as one digit: without pieces at the picture's border that lie
    far from all the other ink (a sliver or corner of shade, a table's edge, the rim of the
    sheet), when the ink clear of the border is tall enough to be the digit. A digit on a
    photographed sheet stands clear of the border with its strokes close together; a digit
    cropped tightly touches the border itself, its pieces close to each other, so nothing is
    dropped. Far: further than half the clear ink's height. Tall enough: at least half as tall as
    the tallest of the border pieces."""
    labels, count = ink.pieces if ink.pieces is not None else label_pieces(ink.mask)
    border = _border_ids(labels)
    if not len(border) or len(border) == count:
        return ink.mask
    clear = ink.mask & ~np.isin(labels, border)
    rows = np.flatnonzero(clear.any(1))
    height = rows[-1] - rows[0] + 1
    spans = ndimage.find_objects(labels)
    if height < 0.5 * max(spans[k - 1][0].stop - spans[k - 1][0].start for k in border):
        return ink.mask
    reach = int(np.ceil(0.5 * height))
    far = []
    for k in border:
        # Only the piece's surroundings, as far as reach, need looking at.
        down, across = spans[k - 1]
        window = (slice(max(down.start - reach, 0), down.stop + reach),
                  slice(max(across.start - reach, 0), across.stop + reach))
        piece = labels[window] == k
        others = ink.mask[window] & ~piece
        if not others.any() or ndimage.distance_transform_edt(~others)[piece].min() > reach:
            far.append(k)
    return ink.mask & ~np.isin(labels, far) if far else ink.mask


def _out_of_shadow(grey, found, dark, name):
    """(levels, mask, pieces): the ink found against a smooth paper (found: those three), or,
    where a shadow or uneven light across the sheet made part of the paper look like ink, the ink
    found against the paper right around each pixel (shade_free) at a scale a few times the
    strokes' width. The strokes are measured on the ink clear of the picture's border, which a
    shadow reaches and a digit on a photographed sheet does not; a digit cropped so tightly that
    it has no such ink keeps the smooth paper, which reads a bold digit filling the picture."""
    side = min(grey.shape)
    if side < 32:
        return found
    # Only a picture whose ink, at the smooth paper's threshold, runs along a tenth of its border
    # can hold a shadow across the sheet; the others are spared the search.
    raw = found[0] > otsu_threshold(sample(found[0]))
    if np.concatenate([raw[0], raw[-1], raw[:, 0], raw[:, -1]]).mean() < 0.03:
        return found
    # The strokes are measured at half size, where it costs a quarter, on the ink without the
    # printed lines and boxes (thinner than any pen). Each pixel there is the mean of four: one
    # picked out of four keeps all the noise, which deep shade magnifies (the ink is measured
    # against the paper's brightness) until the writing drowns in it.
    h, w = grey.shape[0] // 2 * 2, grey.shape[1] // 2 * 2
    half = shade_free(grey[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)), side // 8 | 1)
    try:
        first = drop_rule_families(half, _threshold(half, name))
    except NoDigitError:
        return found
    first, (labels, count) = _clear_of_shade(*_drop_frames(first, label_pieces(first)), half, side // 8)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    sizes[_border_ids(labels)] = 0
    # Fragments of a blurred bold digit cropped tightly are not enough to measure strokes by.
    if sizes.max() < 20 or sizes.sum() < 0.25 * np.count_nonzero(first):
        return found
    pen = 2 * pen_width((sizes >= 0.1 * sizes.max())[labels])
    # Smoothed a little first, for the same noise (a 3x3 mean, far finer than any pen here).
    levels = shade_free(ndimage.uniform_filter(grey, 3), int(np.clip(3 * pen, 5, side // 4)) | 1)
    try:
        mask, pieces = _without_wedges(*_find_ink(levels, name, edges=False), pen)
    except NoDigitError:
        return found
    # Either the local ink holds strokes far from any of the smooth paper's ink: the writing in
    # the shade, which went with the shadow when that was set aside as a table at the edge, or a
    # digit on the shadow's edge, which went with it too: a piece clear of the border, as large
    # as the digits, that the smooth paper's ink does not reach at all.
    size = int(2 * pen) | 1
    far = mask & ~ndimage.maximum_filter(found[1], size=size)
    if np.count_nonzero(far) > 0.25 * mask.sum() or _holds_a_lost_digit(far, pieces):
        return levels, mask, pieces
    # Or the smooth paper's ink holds much ink away from the local ink's strokes: the shadowed
    # paper, or, where the shadow covers most of the sheet and the lit part was taken for chalk
    # on a board, that part. (A speckled slab's thickness says less.)
    away = _slab_away(found[2][0], mask, size)
    if away <= 0.25 * mask.sum() or (not dark and away < 0.1 * mask.size):
        return found
    return levels, mask, pieces


def _slab_away(labels, mask, size):
    """How many pixels of the smooth paper's ink (labels: its pieces) are slab away from the local
    ink (mask) by size (an odd width, about two pens). Only ink that reaches the picture's border
    counts: a shadow falls across the sheet's edge, while a digit that the local ink lost (in a
    box, say) stands on the sheet. And only where it is far thicker than a stroke (what an
    opening at twice the pen's width leaves, once noise has been smoothed out of it): a bold
    digit cropped tightly is all strokes."""
    near = ndimage.maximum_filter(mask, size=size)
    edge = np.isin(labels, _border_ids(labels))
    solid = ndimage.uniform_filter(edge.astype(np.float32), size=5) > 0.5
    slab = ndimage.maximum_filter(ndimage.minimum_filter(solid, size=size, mode="constant"), size=size)
    return np.count_nonzero(slab & ~near)


def _holds_a_lost_digit(far, pieces):
    """Whether a piece of ink clear of the picture's border lies almost wholly in far (ink the
    other reading missed) and is at least half as tall as the tallest such piece (a digit, not a
    speck; by height, which a 1 shares with a bold 0). pieces: label_pieces of the ink that far
    is part of."""
    labels, count = pieces
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    missed = np.bincount(labels[far], minlength=count + 1)
    heights = np.zeros(count + 1)
    for k, (rows, _) in enumerate(ndimage.find_objects(labels), start=1):
        heights[k] = rows.stop - rows.start
    heights[_border_ids(labels)] = 0
    return bool(((missed >= 0.9 * sizes) & (heights >= 0.5 * heights.max()) & (heights > 0)).any())


def _clear_of_shade(mask, pieces, levels, square):
    """(mask, pieces) of the first look for ink in a shadow without the shade that the closing's
    square leaves along the picture's border (see _without_wedges; here the pen is not known
    yet): pieces lying along the border for longer than the square, no deeper than the square,
    and fainter than the writing, as shade is (it darkens the paper less than ink does). Writing
    that touched them is cut from the border at the square's depth, so that it counts as ink
    clear of the border. The fragments of a digit cropped tightly touch the border for less, or
    are as dark as the rest of it, and stay."""
    labels, count = pieces
    if not count:
        return mask, pieces
    contact, reach = _along_border(labels, count)
    ink = np.percentile(levels[mask], 95)
    faint = np.zeros(count + 1, bool)
    faint[1:] = np.asarray(ndimage.median(levels, labels, np.arange(1, count + 1))) < 0.75 * ink
    shade = np.flatnonzero((contact > square) & (reach <= square) & faint)
    if not len(shade):
        return mask, pieces
    mask = mask & ~np.isin(labels, shade)
    rim = np.ones_like(mask)
    rim[square:-square, square:-square] = False
    kept = mask & ~(rim & np.isin(labels, _border_ids(labels)))
    return kept, label_pieces(kept)


def _along_border(labels, count):
    """(contact, reach) per piece: how many of its pixels lie on the picture's border, and how far
    from the border its bounding box reaches inside."""
    rim = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    contact = np.bincount(rim, minlength=count + 1)
    contact[0] = 0
    h, w = labels.shape
    reach = np.zeros(count + 1)
    for k, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
        reach[k] = min(min(rows.stop - 1, h - rows.start), min(cols.stop - 1, w - cols.start)) - 1
    return contact, reach


def _without_wedges(mask, pieces, pen):
    """(mask, pieces) without the wedges of shade that the local paper leaves where a shadow's
    edge meets the picture's border at a slant: too narrow there for the closing's square (three
    pens wide), they look like ink. They lie along the border for longer than a stroke is wide,
    and no further from it than that square."""
    labels = pieces[0]
    contact, reach = _along_border(labels, pieces[1])
    wedges = np.flatnonzero((contact > pen) & (reach <= 3 * pen))
    if not len(wedges):
        return mask, pieces
    mask = mask & ~np.isin(labels, wedges)
    if not mask.any():
        raise NoDigitError("only wedges of shade")
    return mask, label_pieces(mask)


def _find_ink(levels, name, edges=True):
    """(mask, pieces): the pixels of levels that are ink, and their label_pieces. Most pictures
    lose no piece on the way, so the pieces are numbered once, not for each step that looks at
    them. edges: whether to look for a table or shadow along the picture's edge (ink found
    against the local paper has none: it is flat there)."""
    mask = _drop_ruled_lines(drop_rule_families(levels, _threshold(levels, name)))
    mask, pieces = _drop_frames(mask, label_pieces(mask))
    kept = _set_aside_edge_background(levels, mask, pieces, name) if edges else mask
    return _drop_specks(kept, pieces if kept is mask else label_pieces(kept))


# A handwritten digit is one to three pieces of ink; fifty leaves room for long numbers written
# in broken strokes, while random noise leaves far more pieces.
MAX_PIECES = 50


def _threshold(levels, name):
    blank = NoDigitError(f"No digit found in {name}: the image is blank or uniform.")
    if float(levels.max()) < 1e-3:
        raise blank
    mask = levels > otsu_threshold(levels)
    background = levels[~mask]
    if background.size == 0 or mask.sum() < 3:
        raise blank
    contrast = float(np.median(sample(levels[mask]))) - float(np.median(sample(background)))
    # On plain noise Otsu still splits the histogram, but into two halves close together; real
    # ink stands many standard deviations clear of the paper.
    if contrast < max(6 * float(background.std()), 0.02):
        # The background's spread also counts the soft edges of a bold, blurred digit filling
        # the picture; the noise is what changes from one background pixel to the next.
        jitter = float((levels - ndimage.uniform_filter(levels, 5, mode="nearest"))[~mask].std())
        if contrast < max(6 * jitter, 0.02):
            raise blank
    return mask


def label_pieces(mask):
    """(labels, count): the mask's 8-connected pieces numbered 1..count (0 is background)."""
    return ndimage.label(mask, structure=EIGHT_CONNECTED)


def _border_ids(labels):
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return np.unique(edge[edge > 0])


def _set_aside_edge_background(levels, mask, pieces, name):
    """The mask without the table around a photographed sheet, or a shadow at its edge.

    Such a region touches the picture's border, is often darker than any pen, and is solid: far
    thicker than a pen stroke. A digit cropped tightly touches the border too, but with strokes
    as thin as the rest of the ink. So the ink is looked for again away from the border pieces
    (their darkness may have pushed the first threshold past the pen), and only the border
    pieces much thicker than that ink's strokes are set aside. pieces: label_pieces(mask)."""
    labels, count = pieces
    edge_ids = _border_ids(labels)
    if not len(edge_ids):
        return mask
    edge = np.isin(labels, edge_ids)
    try:
        inner = _threshold(np.where(ndimage.binary_dilation(edge, iterations=2), 0.0, levels), name)
        inner_labels, _ = label_pieces(inner)
        inner &= ~np.isin(inner_labels, _border_ids(inner_labels))
    except NoDigitError:
        return mask
    # Inside ink must be pen-strong, not the JPEG ringing or anti-aliasing left around a digit
    # that itself touches the border.
    if inner.sum() < 20 or np.median(levels[inner]) < 0.25 * np.median(sample(levels[mask])):
        return mask
    # A digit cropped tightly leaves, away from the border, only fragments of itself, a few
    # pixels from its border pieces; the digit on a photographed sheet stands clear of the table
    # by a margin of paper (here: 4 pixels, or 3% of the picture's long side if more).
    clearance = float(ndimage.distance_transform_edt(~edge)[inner].min())
    if clearance < max(4.0, 0.03 * max(mask.shape)):
        return mask
    # Distance to the nearest non-ink pixel, the picture's border counting as ink: a strip of
    # table along an edge is as thick as it looks, not half of it.
    depth = ndimage.distance_transform_edt(np.pad(mask | inner, 1, constant_values=True))[1:-1, 1:-1]
    pen = float(depth[inner].max())
    # The border pieces with a pixel that deep (the same as comparing each piece's maximum depth,
    # without sorting the picture's pixels by piece).
    background_ids = np.intersect1d(np.unique(labels[depth > 2.5 * pen + 1]), edge_ids)
    if not len(background_ids):
        return mask
    return (mask & ~np.isin(labels, background_ids)) | inner


def _drop_specks(mask, pieces):
    """(mask, pieces): the ink mask without isolated specks (dust, noise, JPEG artefacts),
    8-connected pieces smaller than a tenth of the largest, and its label_pieces. pieces:
    label_pieces(mask)."""
    labels, count = pieces
    if count <= 1:
        return mask, pieces
    size = np.bincount(labels.ravel())
    size[0] = 0
    keep = size >= 0.1 * size.max()
    keep[0] = False
    if keep[1:].all():
        return mask, pieces
    mask = keep[labels]
    return mask, label_pieces(mask)


def _drop_ruled_lines(mask):
    """The ink mask without the ruled lines of lined or squared paper, or of a table around a
    cell: straight horizontal or vertical runs across nine tenths of the picture, thin for their
    length, and either at least three times as long as the tallest piece of writing clear of the
    picture's border, or half as long again with paper beside it, clear of the writing or far
    thinner than its strokes. (A digit's own bar or stem is neither: it is as thick as the rest
    of the digit, which joins it. A digit cropped so tightly that it touches the border is left
    as it is: it has no such piece beside it.)"""
    h, w = mask.shape
    lines = _long_runs(mask, max(int(0.9 * w), 8)) | _long_runs(mask.T, max(int(0.9 * h), 8)).T
    if not lines.any():
        return mask
    labels, count = label_pieces(mask & ~ndimage.binary_dilation(lines, iterations=1))
    border = set(_border_ids(labels))
    clear = [s for k, s in enumerate(ndimage.find_objects(labels), start=1) if k not in border]
    if not clear:
        return mask
    tall = max(max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in clear)
    # Each piece: writing clear of the border, not a speck of noise (nor a sliver of a blurred
    # line's edge, which runs to the border).
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    sizes[list(border)] = 0
    writing = sizes >= 0.1 * sizes.max()
    pen = stroke_width(writing[labels])
    line_labels, count = label_pieces(lines)
    areas = np.bincount(line_labels.ravel(), minlength=count + 1)
    long_ids = []
    for i, s in enumerate(ndimage.find_objects(line_labels), start=1):
        length = max(s[0].stop - s[0].start, s[1].stop - s[1].start)
        # A ruled line is thin for its length; a bold stroke across a tightly cropped digit is not.
        if areas[i] / length > length / 15 or length < 1.5 * tall:
            continue
        if length < 3 * tall:
            # The two pixels on each side of the line: paper beside a table's line, ink beside a
            # run through the middle of a bold stroke. Where writing touches the line, it must be
            # far thinner than the writing's strokes: a digit's own stem or bar is not.
            box = tuple(slice(max(x.start - 3, 0), x.stop + 3) for x in s)
            band = ndimage.binary_dilation(line_labels[box] == i, iterations=1)
            beside = ndimage.binary_dilation(band, iterations=2) & ~band
            if mask[box][beside].mean() > 0.25:
                continue
            if writing[labels[box][beside]].any() and stroke_width(line_labels[s] == i) > 0.6 * pen:
                continue
        long_ids.append(i)
    if not long_ids:
        return mask
    return mask & ~ndimage.binary_dilation(np.isin(line_labels, long_ids), iterations=1)


def _drop_frames(mask, pieces):
    """(mask, pieces): the ink mask (pieces: its label_pieces) and its pieces without the
    printed boxes around the writing (paper.printed_boxes)."""
    frames = printed_boxes(mask, pieces[0])
    if not frames.any():
        return mask, pieces
    mask = mask & ~frames
    return mask, label_pieces(mask)


def _long_runs(mask, length):
    """The pixels of mask that lie in a horizontal run of at least `length` pixels."""
    out = np.zeros(mask.shape, bool)
    # Only a row with that much ink can hold such a run: counting first spares most pictures,
    # which have none, the search for runs through every row.
    candidates = np.flatnonzero(np.count_nonzero(mask, axis=1) >= length)
    if not len(candidates):
        return out
    padded = np.zeros((len(candidates), mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask[candidates]
    rows, starts = np.nonzero(np.diff(padded, axis=1) == 1)
    ends = np.nonzero(np.diff(padded, axis=1) == -1)[1]
    for r, s, e in zip(candidates[rows], starts, ends):
        if e - s >= length:
            out[r, s:e] = True
    return out


def stroke_width(mask):
    """Mean stroke width in pixels of a boolean ink mask: ink area over half its boundary length."""
    area = int(mask.sum())
    if area == 0:
        return 0.0
    # The boundary is the ink a cross-shaped erosion removes: pixels with a 4-neighbour of paper,
    # outside the picture counting as paper.
    interior = ndimage.binary_erosion(mask, FOUR_CONNECTED, border_value=0)
    boundary = area - int(np.count_nonzero(interior))
    return 2.0 * area / max(boundary, 1)


def pen_width(mask):
    """The typical width of the mask's strokes in pixels: twice the median distance to the paper
    along the strokes' middle lines (where that distance peaks). Unlike an average over the
    area, a few thick blobs beside the writing barely move it."""
    depth = ndimage.distance_transform_edt(mask)
    ridge = mask & (depth >= ndimage.maximum_filter(depth, size=3))
    return 2.0 * float(np.median(depth[ridge])) if ridge.any() else 0.0
