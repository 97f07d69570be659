"""The pictures that are not digits which bench_nondigits.py measures on: kinds that no training
run and no threshold ever sees (training/nondigits.py draws the trained ones), each as ink
(levels in [0, 1], background 0) that picture() then photographs or puts on a canvas.

  fonts        Latin letters in the STIX and Computer Modern fonts (training draws DejaVu only)
  alphabets    Greek and Cyrillic letters
  pen letters  Latin letters thinned to their skeleton and traced with a pen, as written by hand
  symbols      @ & % € £ ¥ and mathematical signs
  pictograms   a plane, an umbrella, a phone, scissors, an anchor, a cup, a chess knight, notes
  clothes      a shirt, trousers, a dress, a shoe, a bag, a hat, a sock: outlined or filled
  doodles      a house, a tree, a face, a sun, a fish, a car, a flower
  textures     stripes, checks and grain across most of the picture
Letters and signs that people write as digits are left out, as in training.
"""
import io

import numpy as np
from bench_predict import finish_photo, lighting, place, skeleton
from PIL import Image

from training.nondigits import LETTERS, SIDE, glyph, pen, smooth_path, warp

HELD_OUT_FONTS = ["STIXGeneral.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBol.ttf", "cmr10.ttf", "cmss10.ttf",
                  "cmti10.ttf"]
GREEK_CYRILLIC = "αγελμνπρστφχψωΓΛΠΣΦΨΩЖЩЯФЮДЛИЦШжщяфюдлицшгкмнпт"
SYMBOLS = "@&%€£¥∑∫∞∂∇⊕∀∃≈≠√"
PICTOGRAMS = "✈☂☎✂⚓☕♞♪♫☺☀★♥♣♠✿⌛"


def fonts(rng):
    return warp(glyph(LETTERS[rng.integers(len(LETTERS))], HELD_OUT_FONTS[rng.integers(len(HELD_OUT_FONTS))],
                      rng), rng)


def alphabets(rng):
    font = ["DejaVuSans.ttf", "STIXGeneral.ttf", "DejaVuSerif.ttf"][rng.integers(3)]
    return warp(glyph(GREEK_CYRILLIC[rng.integers(len(GREEK_CYRILLIC))], font, rng), rng)


def pen_letters(rng):
    ink = glyph(LETTERS[rng.integers(len(LETTERS))], HELD_OUT_FONTS[rng.integers(3)], rng)
    bones = skeleton(ink > 0.5)
    width = SIDE * rng.uniform(0.02, 0.06)
    ys, xs = np.nonzero(bones)
    dots = [[(x, y), (x, y)] for y, x in zip(ys, xs)]
    return warp(pen(dots, width), rng, amount=0.08)


def symbols(rng):
    font = ["DejaVuSans.ttf", "STIXGeneral.ttf"][rng.integers(2)]
    return warp(glyph(SYMBOLS[rng.integers(len(SYMBOLS))], font, rng), rng)


def pictograms(rng):
    return warp(glyph(PICTOGRAMS[rng.integers(len(PICTOGRAMS))], "DejaVuSans.ttf", rng), rng, amount=0.04)


def _scaled(shape, s):
    return [[(x * s, y * s) for x, y in line] for line in shape]


CLOTHES = [
    [[(.3, .2), (.45, .15), (.55, .15), (.7, .2), (.88, .38), (.78, .46), (.7, .38), (.7, .85), (.3, .85),
      (.3, .38), (.22, .46), (.12, .38)]],                                                    # shirt
    [[(.3, .12), (.7, .12), (.76, .88), (.56, .88), (.5, .4), (.44, .88), (.24, .88)]],         # trousers
    [[(.42, .12), (.58, .12), (.6, .4), (.8, .88), (.2, .88), (.4, .4)]],                       # dress
    [[(.1, .45), (.35, .45), (.5, .6), (.85, .65), (.9, .78), (.1, .78)]],                      # shoe
    [[(.15, .4), (.85, .4), (.8, .85), (.2, .85)], [(.35, .4), (.38, .2), (.62, .2), (.65, .4)]],  # bag
    [[(.1, .65), (.9, .65), (.9, .72), (.1, .72)], [(.3, .65), (.33, .3), (.67, .3), (.7, .65)]],  # hat
    [[(.4, .1), (.6, .1), (.6, .6), (.8, .72), (.75, .88), (.45, .82), (.4, .6)]],              # sock
]


def clothes(rng):
    shape = _scaled(CLOTHES[rng.integers(len(CLOTHES))], SIDE)
    fill = rng.random() < 0.5
    return warp(pen(shape, SIDE * rng.uniform(0.02, 0.05), closed=True, fill=fill), rng, amount=0.03, tilt=10)


def _circle(cx, cy, r, n=40):
    t = np.linspace(0, 2 * np.pi, n)
    return list(zip(cx + r * np.cos(t), cy + r * np.sin(t)))


def _doodle(which):
    """The lines of one doodle in a unit square."""
    if which == 0:  # house
        return [[(.2, .5), (.2, .9), (.8, .9), (.8, .5), (.2, .5), (.5, .15), (.8, .5)], [(.42, .9), (.42, .68),
                                                                                         (.58, .68), (.58, .9)]]
    if which == 1:  # tree
        return [[(.45, .9), (.45, .6)], [(.55, .9), (.55, .6)],
                smooth_path([(.45, .6), (.2, .55), (.25, .3), (.45, .15), (.7, .25), (.8, .5), (.55, .6)])]
    if which == 2:  # face
        return [_circle(.5, .5, .38), _circle(.37, .4, .04, 12), _circle(.63, .4, .04, 12),
                smooth_path([(.32, .6), (.5, .72), (.68, .6)])]
    if which == 3:  # sun
        rays = [[(.5 + .25 * np.cos(a), .5 + .25 * np.sin(a)), (.5 + .42 * np.cos(a), .5 + .42 * np.sin(a))]
                for a in np.linspace(0, 2 * np.pi, 9)[:-1]]
        return [_circle(.5, .5, .18)] + rays
    if which == 4:  # fish
        return [smooth_path([(.15, .5), (.4, .3), (.65, .5), (.4, .7), (.15, .5)]),
                [(.65, .5), (.88, .32), (.88, .68), (.65, .5)], _circle(.3, .47, .03, 10)]
    if which == 5:  # car
        return [[(.1, .7), (.1, .5), (.3, .5), (.4, .32), (.65, .32), (.75, .5), (.9, .5), (.9, .7), (.1, .7)],
                _circle(.28, .72, .08), _circle(.72, .72, .08)]
    petals = [_circle(.5 + .2 * np.cos(a), .35 + .2 * np.sin(a), .1) for a in np.linspace(0, 2 * np.pi, 7)[:-1]]
    return petals + [[(.5, .5), (.5, .95)]]  # flower


def doodles(rng):
    return warp(pen(_scaled(_doodle(rng.integers(7)), SIDE), SIDE * rng.uniform(0.015, 0.04)), rng,
                amount=0.03, tilt=10)


def textures(rng):
    s = 2 * SIDE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    choice = rng.random()
    angle = rng.uniform(0, np.pi)
    period = s * rng.uniform(0.04, 0.12)
    along = np.cos(angle) * xx + np.sin(angle) * yy
    if choice < 0.4:
        field = np.sin(2 * np.pi * along / period + 3 * np.sin(yy / s * rng.uniform(2, 6)))  # wood grain
    elif choice < 0.7:
        across = -np.sin(angle) * xx + np.cos(angle) * yy
        field = np.sin(2 * np.pi * along / period) * np.sin(2 * np.pi * across / period)  # checks
    else:
        field = rng.normal(size=(s, s))
        field = field - np.roll(field, 1, 0) * 0.5
    return (field > rng.uniform(0.0, 0.5)).astype(np.float32)


HELD_OUT_KINDS = {"fonts": fonts, "alphabets": alphabets, "pen letters": pen_letters, "symbols": symbols,
                  "pictograms": pictograms, "clothes": clothes, "doodles": doodles, "textures": textures}


def crop(ink):
    """The ink cropped to where it is solid."""
    solid = ink > 0.5
    rows, cols = np.flatnonzero(solid.any(1)), np.flatnonzero(solid.any(0))
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def resized(ink, height, most_width=None):
    """The ink cropped and scaled to height pixels tall, edges kept sharp; less tall where that
    would make it wider than most_width, so that all of it fits (a number beside a word)."""
    ink = crop(ink)
    if most_width is not None:
        height = min(height, max(1, int(most_width * ink.shape[0] / ink.shape[1])))
    width = max(1, round(ink.shape[1] * height / ink.shape[0]))
    big = np.asarray(Image.fromarray(ink.astype(np.float32), mode="F").resize((width, height),
                                                                              Image.Resampling.BICUBIC))
    return np.clip(big, 0, 1).astype(np.float32)


def picture(ink, style, rng):
    """(file bytes, extension) of the ink as a phone photo of paper (style "photo") or a drawing
    on a canvas, dark on white or with a transparent background (style "canvas")."""
    if style == "canvas":
        side = int(rng.integers(200, 601))
        ink = place(resized(ink, int(side * rng.uniform(0.3, 0.8)), 0.9 * side), side, side, rng)
        buf = io.BytesIO()
        if rng.random() < 0.5:
            Image.fromarray(np.round(255 * (1 - ink)).astype(np.uint8)).save(buf, "PNG")
        else:
            rgba = np.zeros(ink.shape + (4,), np.uint8)
            rgba[..., 3] = np.round(255 * ink).astype(np.uint8)
            Image.fromarray(rgba, "RGBA").save(buf, "PNG")
        return buf.getvalue(), ".png"
    width = int(rng.integers(480, 1201))
    height = width * 3 // 4
    ink = place(resized(ink, int(height * rng.uniform(0.2, 0.7)), 0.9 * width), height, width, rng) * rng.uniform(0.8, 1.0)
    paper = np.array([rng.uniform(0.85, 1.0), rng.uniform(0.8, 1.0), rng.uniform(0.65, 0.95)])
    colour = np.array([0.1, 0.1, rng.uniform(0.1, 0.45)]) * rng.uniform(0.3, 1.0)
    light = lighting(height, width, rng, rng.uniform(0.5, 0.8), 1.0)
    rgb = (paper * (1 - ink[..., None]) + colour * ink[..., None]) * light[..., None]
    return finish_photo(rgb, rng), ".jpg"
