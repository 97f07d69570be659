"""Removing the paper: its tint, the lighting and shadows across it, which way round the ink is,
and the lines and boxes printed on it.
"""
import numpy as np
from scipy import ndimage


def remove_background(grey):
    """grey minus its background (paper tint, lighting gradient, vignetting), which is estimated
    as a smooth quadratic surface fitted to the background pixels only: after this the paper is
    near 0 everywhere and one threshold fits the whole picture. The result is signed: ink is
    negative where it is darker than the paper, positive where lighter."""
    h, w = grey.shape
    # Fit on a small copy: the lighting is smooth, and a 64x64 fit is cheap.
    step = max(1, max(h, w) // 64)
    sample = grey[::step, ::step]
    ys, xs = np.mgrid[0:sample.shape[0], 0:sample.shape[1]]
    ys = ys.ravel() * step / max(h - 1, 1)
    xs = xs.ravel() * step / max(w - 1, 1)
    values = sample.ravel().astype(np.float64)
    # A background of one exact grey level (a canvas or a drawing program's export, a cleaned
    # scan) has no lighting to fit, and fitting costs most of this function's time. It is that
    # when half the pixels are alike and the rest are ink with its soft edges; not when values
    # near the level lie away from any ink, as where a sheet blown out to pure white by the
    # light fades into shadow.
    level = np.median(values)
    alike = sample == level
    if 2 * np.count_nonzero(alike) >= alike.size:
        near_ink = ndimage.binary_dilation(np.abs(sample - level) >= 0.15, iterations=2)
        if np.count_nonzero(~alike & ~near_ink) <= 0.01 * alike.size:
            return grey - np.float32(level)
    basis = np.stack([np.ones_like(xs), xs, ys, xs * xs, xs * ys, ys * ys], axis=1)
    # Two starting guesses for which pixels are paper: all of them (right when the ink is thin,
    # however uneven the light), or the larger side of an Otsu split (right when a bold digit
    # covers a third of the picture, which a quadratic could otherwise bend to follow). Each is
    # refined; the fit that leaves the paper flattest wins.
    side = values > otsu_threshold(values)
    starts = [np.ones(values.shape, bool), side if side.mean() >= 0.5 else ~side]
    fits = [_fit_paper(basis, values, keep) for keep in starts]
    # Paper under light is never brighter than the brightest pixel nor darker than the darkest:
    # a surface that leaves that range is following a bold digit's strokes, not the lighting
    # (and would turn the digit inside out). Then a flat paper level is the better guess.
    lo, hi = values.min() - 0.05, values.max() + 0.05
    fits = [fit for fit in fits if lo <= (surface := basis @ fit[0]).min() and surface.max() <= hi]
    if not fits:
        return grey - paper_level(grey)
    c = min(fits, key=lambda fit: fit[1])[0].astype(np.float32)
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    surface = c[0] + c[1] * xx + c[2] * yy + c[3] * xx * xx + c[4] * xx * yy + c[5] * yy * yy
    return grey - surface


def _fit_paper(basis, values, keep):
    """(coefficients, spread): least squares on the pixels in keep, then refitted on the pixels
    within 3 robust standard deviations of the surface until that set settles. The median
    absolute deviation ignores the ink (a minority), whichever side of the paper it lies."""
    # Until a fit exists: a flat surface at the median, which is all a tiny picture allows.
    coef = np.zeros(basis.shape[1])
    coef[0] = np.median(values)
    spread = float(np.inf)
    for _ in range(8):
        chosen = basis[keep]
        if len(chosen) < 2 * basis.shape[1]:
            break
        # Solved through the 6x6 normal equations (cheap); lstsq rather than solve, because a
        # picture one pixel high makes them singular.
        coef = np.linalg.lstsq(chosen.T @ chosen, chosen.T @ values[keep], rcond=None)[0]
        residual = values - basis @ coef
        centre = np.median(residual[keep])
        spread = 1.4826 * np.median(np.abs(residual[keep] - centre))
        new_keep = np.abs(residual - centre) <= max(3 * spread, 0.01)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return coef, spread


def paper_level(grey):
    # The median of the larger side of an Otsu split: the paper, which covers more of a picture
    # than the ink does.
    above = grey > otsu_threshold(grey)
    side = above if above.mean() >= 0.5 else ~above
    return float(np.median(grey[side])) if side.any() else float(np.median(grey))


def to_ink_polarity(residual, dark=None):
    """The ink bright on a black background, as in MNIST, from the background-free image. The
    ink is whichever side of the paper reaches further: dark ink on light paper gives a deep
    minimum, chalk on a board a high maximum. Extremes are taken after a 3x3 average so that a
    single noisy pixel cannot outvote a stroke. dark: is_dark_ink(residual), where known."""
    dark = is_dark_ink(residual) if dark is None else dark
    return np.clip(-residual if dark else residual, 0.0, None)


def is_dark_ink(residual):
    """Whether the ink of the background-free image is darker than its paper (see
    to_ink_polarity)."""
    smooth = ndimage.uniform_filter(residual, 3, mode="nearest")
    return -float(smooth.min()) > float(smooth.max())


def sample(values, size=65536):
    # Medians and percentiles of a regular subsample of at most `size` values: as good as the
    # whole image's for these statistics, and sorting a megapixel photo would dominate the time.
    flat = values.ravel()
    return flat[::max(1, flat.size // size)]


def otsu_threshold(values):
    """Otsu's threshold of values (any range): the level that best splits them into two classes."""
    lo, hi = float(values.min()), float(values.max())
    edges = np.linspace(lo, hi, 257)
    bins = np.minimum(((values - lo) * (256 / max(hi - lo, 1e-12))).astype(np.int64), 255)
    hist = np.bincount(bins.ravel(), minlength=256).astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(hist * centres) / np.maximum(weight0, 1e-12)
    mean1 = ((hist * centres).sum() - np.cumsum(hist * centres)) / np.maximum(weight1, 1e-12)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def shade_free(grey, size):
    """How much darker each pixel is than the paper right around it, as a fraction of that
    paper's brightness (0 on paper, near 1 for black ink). The paper around a pixel is the grey
    closing of the picture at `size` pixels: the brightest level that every square of that size
    holding the pixel reaches, which fills in strokes thinner than the square but keeps a
    shadow's edge where it is, sharp or soft, since a long boundary between two flat tones is
    wider than any square. A fraction rather than a difference, because a shadow scales the
    paper and the ink in it alike."""
    paper = ndimage.grey_closing(grey, size=(size, size), mode="reflect")
    return np.clip((paper - grey) / np.maximum(paper, 0.05), 0.0, None).astype(np.float32)


def printed_boxes(mask, labels):
    """The pixels of the ink mask (labels: its 8-connected pieces) on the printed boxes around
    the writing, a form's fields or a box drawn with a ruler, straight or turned a few degrees.
    A box is a piece whose bounding box has ink along almost all of each of its four sides,
    within a band 12% of its longer side deep (a tenth of the shorter side at least, a quarter
    at most), and at least a quarter paper inside, its lines thinner than a tenth of its
    shorter side, with writing inside it. Only those lines are the box's (see _first_line): a
    digit that touches its box, or runs along it, keeps its strokes. (A digit's strokes along
    its own bounding box are thicker for it, or leave its corners empty, or hold no ink, as a
    square 0 does.)"""
    frames = np.zeros(mask.shape, bool)
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        height, width = box[0].stop - box[0].start, box[1].stop - box[1].start
        if min(height, width) < 20:
            continue
        own = labels[box] == k
        # A box turned by a few degrees drifts across its bounding box's edge by up to a tenth
        # of its length; the band is that deep, but a line must be thinner than a tenth of the
        # shorter side however deep the band.
        thin = max(2, min(height, width) // 10)
        band = max(thin, min(int(np.ceil(0.12 * max(height, width))), min(height, width) // 4))
        sides = [own[:band], own[:-band - 1:-1], own.T[:band], own.T[:-band - 1:-1]]
        inside = own[band:-band, band:-band]
        # Its corners turn away from the band's ends, by as much as the band is deeper.
        ends = band - thin
        # A box's lines are thin for it (but for one, where the writing lies along it), a
        # digit's strokes along its bounding box are not; and a box is drawn around writing: a
        # square 0 holds no ink, an empty box is left as it is.
        if (min(side.any(0)[ends:side.shape[1] - ends].mean() for side in sides) < 0.9
                or inside.mean() > 0.75
                or sorted(np.median(_first_runs(side)[2]) for side in sides)[-2] >= thin
                or mask[box][band:-band, band:-band].mean() < 0.02):
            continue
        line = np.zeros(own.shape, bool)
        views = [line[:band], line[:-band - 1:-1], line.T[:band], line.T[:-band - 1:-1]]
        for side, view in zip(sides, views):
            view |= _first_line(side)
        frames[box] |= line
    return frames


def _first_runs(side):
    """(columns, first, runs): the columns of a band along an edge (row 0) that hold ink, the
    row of the first ink met from the edge in each, and how many rows of ink run on unbroken
    from there (a line's thickness, not the strokes further in)."""
    present = np.flatnonzero(side.any(0))
    first = np.argmax(side, axis=0)[present]
    rows = np.arange(side.shape[0])[:, None]
    gap = (rows >= first) & ~side[:, present]
    ends = np.where(gap.any(0), np.argmax(gap, axis=0), side.shape[0])
    return present, first, ends - first


def _first_line(side):
    """In a band of ink along an edge (the edge is row 0), the straight line that runs along
    it: where the first ink met from the edge mostly lies, as thick as that ink mostly runs on
    unbroken. (A digit's stroke that crosses the line and sticks out beyond it moves the first
    ink in a few columns only.)"""
    present, first, runs = _first_runs(side)
    first = first.astype(np.float64)
    thickness = np.median(runs)
    inliers = np.ones(len(present), bool)
    for _ in range(3):
        slope, offset = np.polyfit(present[inliers], first[inliers], 1)
        inliers = np.abs(first - (slope * present + offset)) <= max(2.0, thickness)
        if inliers.sum() < 2:
            break
    top = slope * np.arange(side.shape[1]) + offset
    rows = np.arange(side.shape[0])[:, None]
    return side & (rows >= np.floor(top) - 1) & (rows <= np.ceil(top) + thickness)


def drop_rule_families(levels, mask):
    """The ink mask without the printed lines of squared or lined paper, whatever their contrast:
    a family of at least three long, thin, straight, parallel lines, horizontal or vertical to
    within a few degrees. They are looked for among the pixels at least half as dark as the
    threshold asks (a faint line breaks up at the threshold), by projecting those pixels across
    each direction (a line is a tall, narrow peak). A line's pixels are taken out of the ink,
    but not where ink goes on beyond it: a stroke crossing a line stays whole. The
    levels lose the lines too (in place), so that no faint trace of them comes back as soft ink
    around the strokes."""
    if min(mask.shape) < 64:  # too small to be a photo of a sheet of paper
        return mask
    faint = levels > 0.5 * otsu_threshold(sample(levels))
    ys, xs = np.nonzero(faint)
    if len(ys) < 3 * max(mask.shape):
        return mask
    keep = mask.copy()
    # Each direction's sharpest angle, searched within the skew a photo's perspective gives.
    angles = {flip: _sharpest_angle(*((xs, ys) if flip else (ys, xs)), 0.0,
                                    ((6.0, 1.0), (1.0, 0.2), (0.2, 0.05))) for flip in (False, True)}
    found = {flip: _rule_band(ys, xs, mask.shape, flip, angles[flip]) for flip in (False, True)}
    # Squared paper cropped to a row of cells shows two lines of one direction, too few to be a
    # family on their own; the other direction's family vouches for them: lines at right angles
    # to it and as far apart as its own.
    for flip in (False, True):
        if found[flip][0] is None and found[not flip][0] is not None:
            found[flip] = _rule_band(ys, xs, mask.shape, flip, across=found[not flip][2:])
    if found[False][0] is None and found[True][0] is None:
        found = _big_cells(ys, xs, faint, levels, angles)
    for band, normal, *_ in found.values():
        if band is None:
            continue
        # Ink just beyond the line on both sides is a stroke crossing it; on one side, a stroke
        # running along it, thicker than the line (the middle bar of a 3 on a grid line).
        beyond = shifted(mask, normal) | shifted(mask, (-normal[0], -normal[1]))
        keep &= ~band | beyond
        levels[band & ~beyond] = 0.0
    return keep


def _rule_band(ys, xs, shape, flip, angle=None, across=None):
    """(band, normal, angle, spacing): the pixels on a family of ruled lines among the points
    ys, xs (near horizontal lines, or near vertical ones with flip), the integer offset that
    steps from a line's middle to just beyond it, the lines' angle in degrees and the distance
    between neighbours; all None when there is no such family. angle: the points' sharpest angle
    (drop_rule_families'), where they are searched alone. across: (angle, spacing) of the other
    direction's family, which lets two lines at right angles to it, a whole number of its
    spacings apart, count as a family."""
    if flip:
        ys, xs, shape = xs, ys, shape[::-1]
    length = shape[1]
    # Turning the picture's axes over turns an angle's sign: a right angle to the other family
    # is minus its angle here.
    if across is not None:
        angle = _sharpest_angle(ys, xs, -across[0], ((1.5, 0.25), (0.2, 0.05)))
    hist, low = _projection(ys, xs, np.radians(angle))
    none = None, None, None, None
    fewest = 3 if across is None else 2
    peaks, count, widths, thin = _line_peaks(hist, shape)
    if count < fewest:
        return none
    # Printed lines are also evenly spaced; a digit's strokes along them are not.
    centres = np.asarray(ndimage.center_of_mass(hist, peaks, np.flatnonzero(thin) + 1)).ravel()
    if len(centres) < fewest:
        return none
    # Evenly spaced: every gap a whole number of the commonest gap (a line may be hidden); on
    # squared paper, of the other family's gap too, give or take the perspective.
    gaps = np.diff(centres)
    spacing = float(np.median(gaps))
    steps = np.round(gaps / spacing)
    if (steps < 1).any() or (np.abs(gaps - steps * spacing) > max(3.0, 0.15 * spacing)).any():
        return none
    if across is not None:
        cells = spacing / across[1]
        if round(cells) < 1 or abs(cells - round(cells)) > 0.25:
            return none
    on_line = np.isin(peaks, np.flatnonzero(thin) + 1)
    on_line |= _more_of_the_family(hist, centres, np.concatenate([[0], np.cumsum(steps)]),
                                   int(widths[thin].max()), 0.15 * length)
    on_line = ndimage.binary_dilation(on_line, iterations=1)
    band, normal = _band(on_line, low, angle, shape, False, int(widths[thin].max()))
    if flip:
        return band.T, normal[::-1], float(angle), spacing
    return band, normal, float(angle), spacing


def _band(on_line, low, angle, shape, flip, width):
    """(band, normal): the pixels of a picture of shape (turned over with flip, as _rule_band
    turns it) whose bin of the projection at angle is on_line, and the integer offset that
    steps from a line `width` pixels wide to just beyond it."""
    if flip:
        band, normal = _band(on_line, low, angle, shape[::-1], False, width)
        return band.T, normal[::-1]
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    a = np.radians(angle)
    bins = np.clip(np.round(yy * np.cos(a) - xx * np.sin(a)).astype(np.int64) - low, 0, len(on_line) - 1)
    reach = int(np.ceil(width / 2)) + 2
    return on_line[bins], (round(reach * np.cos(a)), round(-reach * np.sin(a)))


def _big_cells(ys, xs, faint, levels, angles):
    """{flip: (band, normal)} as _rule_band gives them, for squared paper whose cells are so
    large that the picture holds fewer than three lines either way: lines turned half a degree
    or more that run through the whole picture (a stroke written by hand is never that long
    and straight), both ways at right angles, at least three of them away from the picture's
    edges, so that they cross (a square 0 cropped tightly is four lines that meet at its
    corners), and all alike in width and darkness (printed alike, not a pen's stroke beside a
    rule). Both None when they are not such a lattice. angles: each direction's sharpest
    angle."""
    none = {False: (None, None), True: (None, None)}
    lines = {flip: _full_lines(ys, xs, faint.shape, flip, angles[flip]) for flip in (False, True)}
    inside = []
    for flip, (angle, centres, *_) in lines.items():
        # Lines away from the edges (the middle 90% across them) cross the other way's.
        h, w = faint.shape[::-1] if flip else faint.shape
        a = np.radians(angle)
        middle = h / 2 * np.cos(a) - w / 2 * np.sin(a)
        inside.append(np.count_nonzero(np.abs(centres - middle) <= 0.45 * h))
    # Straight across rows and columns, they are ink._drop_ruled_lines' (a table around a cell,
    # weighed against the writing's strokes); these are turned, as a photo's sheet is.
    if (min(inside) == 0 or sum(inside) < 3 or abs(lines[False][0] + lines[True][0]) > 1.5
            or abs(lines[False][0]) < 0.5):
        return none
    found, widths, darkness = {}, [], []
    for flip, (angle, centres, width, peaks, low) in lines.items():
        for k in np.unique(peaks[peaks > 0]):
            band = _band(peaks == k, low, angle, faint.shape, flip, 0)[0]
            darkness.append(float(np.median(levels[band & faint])))
        widths.extend(width)
        # The bins hold the rim (see _full_lines): two pixels more to step beyond.
        found[flip] = _band(peaks > 0, low, angle, faint.shape, flip, int(width.max()) + 2)
    if max(widths) > 2 * min(widths) + 1 or max(darkness) > 1.5 * min(darkness):
        return none
    return found


def _full_lines(ys, xs, shape, flip, angle):
    """(angle, centres, widths, peaks, low) of the thin lines among the points that run through
    the whole picture at angle (near horizontal ones, or near vertical ones with flip): the
    angle, their places and widths across, the projection's bins on each (numbered from 1,
    two wider either side) and its lowest bin."""
    if flip:
        ys, xs, shape = xs, ys, shape[::-1]
    hist, low = _projection(ys, xs, np.radians(angle))
    # Each line as wide as _rule_band takes it (its blurred rim holds fewer points), but only
    # those with a bin that runs through the whole picture.
    peaks, count, widths, thin = _line_peaks(hist, shape)
    full = ndimage.maximum(hist, peaks, np.arange(1, count + 1)) >= 0.9 * shape[1]
    thin = np.flatnonzero(full & thin) + 1
    centres = np.asarray(ndimage.center_of_mass(hist, peaks, thin)).reshape(-1) + low
    kept = np.where(np.isin(peaks, thin), peaks, 0)
    # Two pixels wider either side (the blurred rim, which the mask may hold).
    kept = ndimage.grey_dilation(kept, size=5)
    return float(angle), centres, widths[thin - 1], kept, low


def _line_peaks(hist, shape):
    """(peaks, count, widths, thin) of a projection across a picture of shape (its lines along
    axis 1): the runs of bins that a line makes, numbered from 1, how many, their widths, and
    which are thin. A line runs across most of the picture and stands out of the rows beside
    it, as no row of a noisy texture does; a printed one is thin, a few pixels however
    blurred."""
    peaks, count = ndimage.label(hist >= max(0.6 * shape[1], 3 * np.median(hist)))
    widths = np.bincount(peaks, minlength=count + 1)[1:]
    return peaks, count, widths, widths <= 3 + 0.02 * min(shape)


def _sharpest_angle(ys, xs, start, spans):
    """The angle in degrees, searched around start in ever finer (span, step) rounds, at which
    the points project most sharply (the sum of the squared counts per one-pixel line). The
    search runs on a regular sample of the points: it projects as sharply."""
    every = max(1, len(ys) // 15000)
    best = (-1.0, start)
    for span, step in spans:
        for angle in np.arange(best[1] - span, best[1] + span + step / 2, step):
            hist = _projection(ys[::every], xs[::every], np.radians(angle))[0]
            score = float(np.dot(hist, hist))
            if score > best[0]:
                best = (score, angle)
    return best[1]


def _more_of_the_family(hist, centres, index, width, least):
    """The projection's bins on the lines of the family that are too short or too broken to be
    found on their own (where a line leaves the picture at a corner, or runs in shade): every
    place one more even step away, if the projection peaks there, with at least `least` pixels.
    centres: the lines found, index: their place in the family (0, 1, 2, ...)."""
    step, start = np.polyfit(index, centres, 1)
    out = np.zeros(len(hist), bool)
    floor = max(least, 3 * float(np.median(hist)))
    for k in range(int(np.floor(-start / step)), int(np.ceil((len(hist) - start) / step)) + 1):
        at = round(start + k * step)
        lo, hi = max(at - 3, 0), min(at + 4, len(hist))
        if lo >= hi or hist[lo:hi].max() < floor:
            continue
        peak = lo + int(np.argmax(hist[lo:hi]))
        out[max(peak - width // 2, 0):peak + width - width // 2] = True
    return out


def _projection(ys, xs, angle):
    """(counts, lowest bin): how many of the points lie on each one-pixel line at the angle."""
    r = np.round(ys * np.cos(angle) - xs * np.sin(angle)).astype(np.int64)
    low = int(r.min())
    return np.bincount(r - low).astype(np.float64), low


def shifted(mask, offset):
    """mask moved by the integer offset (dy, dx), paper coming in at the edges."""
    dy, dx = offset
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        mask[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out
