"""The figure's body parts, drawn back to front on a `Canvas` in figure units.

Each function draws one body part with what covers it (legs with the lower garment, arms with
the sleeves, head with hair and hat). `draw_body` calls them in occlusion order: later shapes
overwrite earlier ones in both the image and the parse maps, so that order is the picture.
Side +1 is the person's left, which is the image's right (figures face the camera).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bilma.data.synth.attributes import Identity
from bilma.data.synth.canvas import RGB, Canvas, Point, part

SIDES = (1, -1)
"""Person's left (image right), then person's right (image left); pose tuples follow it."""

_BAG = part("background", "bag", "background")  # LIP has no bag class


@dataclass(frozen=True)
class Pose:
    """Where one image's figure stands and how, in pixels and figure units (see `Canvas`)."""

    fh: float
    """Figure height in pixels."""
    top: float
    """Pixel row of the head top."""
    cx: float
    """Pixel column of the body's centre line."""
    ground_top: int
    """First pixel row of the ground band."""
    arm_up: tuple[float, float]
    """Upper-arm angle from vertical, degrees, per side of `SIDES`."""
    arm_bend: tuple[float, float]
    """Elbow bend added to `arm_up` for the lower arm, degrees."""
    arm_swing: tuple[float, float]
    """Lower-arm foreshortening factor."""
    spread: tuple[float, float]
    """Extra sideways ankle offset."""
    lift: tuple[float, float]
    """How far each foot is lifted (one is zero)."""
    bag_side: int
    """Side (+1/-1) of the handbag and backpack pack; the scarf's end hangs on the other."""


@dataclass(frozen=True)
class Palette:
    """One image's colours: each attribute's colour with its per-image jitter."""

    upper: RGB
    lower: RGB
    hair: RGB
    shoe: RGB
    bag: RGB
    hat: RGB
    scarf: RGB
    skin: RGB


def _lr(name: str, side: int) -> str:
    return f"{'left' if side > 0 else 'right'}-{name}"


def _upper_classes(ident: Identity) -> tuple[str, str]:
    """The upper garment's lip20 and atr18 class names (ATR has no coat)."""
    lip = {"t-shirt": "upper-clothes", "shirt": "upper-clothes", "coat": "coat"}.get(
        ident.upper, "dress"
    )
    atr = "dress" if ident.upper == "dress" else "upper-clothes"
    return lip, atr


def draw_body(cv: Canvas, ident: Identity, pose: Pose, pal: Palette, local: float = 1.0) -> None:
    """Draw the whole figure of `ident`, back to front.

    `local` scales the local parts that tell look-alikes apart (shoes, bag, hat, scarf): at 2
    each of them covers about one 16-pixel patch of a 192x64 image (`data.synth_local_scale`);
    1 draws every pixel as before the option existed.
    """
    # Behind the body: the backpack's pack, long hair.
    if ident.bag == "backpack":
        draw_backpack(cv, pal, pose.bag_side, local)
    draw_hair_behind(cv, ident, pal)
    ankles = {side: draw_leg(cv, ident, pose, pal, i) for i, side in enumerate(SIDES)}
    draw_lower_garment(cv, ident, pal)
    draw_shoes(cv, pal, ankles, local)
    draw_torso(cv, ident, pal)
    if ident.bag == "backpack":
        draw_backpack_straps(cv, pal, local)
    wrists = {side: draw_arm(cv, ident, pose, pal, i) for i, side in enumerate(SIDES)}
    draw_head(cv, ident, pal, local)
    draw_scarf(cv, ident, pose, pal, local)
    if ident.bag == "handbag":
        draw_handbag(cv, pal, wrists[pose.bag_side], pose.bag_side, local)


def draw_hair_behind(cv: Canvas, ident: Identity, pal: Palette) -> None:
    """Long hair's back part, behind the torso."""
    if ident.hair_length == "long":
        hair_back = [(-0.06, 0.05), (0.06, 0.05), (0.066, 0.25), (-0.066, 0.25)]
        cv.polygon(hair_back, pal.hair, part("hair", "hair", "head"))


def draw_leg(cv: Canvas, ident: Identity, pose: Pose, pal: Palette, i: int) -> Point:
    """Leg `i` of `SIDES`: lower leg, then upper leg with its knee, bare or covered; its ankle."""
    side = SIDES[i]
    hip = (side * 0.038, 0.50)
    ankle = (side * (0.036 + pose.spread[i]), 0.95 - pose.lift[i])
    knee = ((hip[0] + ankle[0]) / 2 + side * 0.003, (hip[1] + ankle[1]) / 2 + 0.005)
    skin_up = part(_lr("leg", side), _lr("leg", side), "upper-legs")
    skin_low = part(_lr("leg", side), _lr("leg", side), "lower-legs")
    if ident.lower == "pants":
        pants_up = part("pants", "pants", "upper-legs")
        cv.limb(knee, ankle, 0.030, 0.022, pal.lower, part("pants", "pants", "lower-legs"))
        cv.limb(hip, knee, 0.039, 0.030, pal.lower, pants_up)
        cv.ellipse(knee, 0.030, 0.030, pal.lower, pants_up)
    else:
        cv.limb(knee, ankle, 0.025, 0.017, pal.skin, skin_low)
        cv.limb(hip, knee, 0.034, 0.025, pal.skin, skin_up)
        cv.ellipse(knee, 0.025, 0.025, pal.skin, skin_up)
    if ident.lower == "shorts":
        hem = (hip[0] + 0.75 * (knee[0] - hip[0]), hip[1] + 0.75 * (knee[1] - hip[1]))
        cv.limb(hip, hem, 0.041, 0.034, pal.lower, part("pants", "pants", "upper-legs"))
    return ankle


def draw_lower_garment(cv: Canvas, ident: Identity, pal: Palette) -> None:
    """What joins the legs: the crotch of pants and shorts, or the skirt."""
    if ident.lower in ("pants", "shorts"):
        crotch = [(-0.076, 0.46), (0.076, 0.46), (0.076, 0.52), (0.0, 0.54), (-0.076, 0.52)]
        cv.polygon(crotch, pal.lower, part("pants", "pants", "upper-legs"))
    elif ident.lower == "skirt":
        skirt = [(-0.078, 0.46), (0.078, 0.46), (0.125, 0.69), (-0.125, 0.69)]
        cv.polygon(skirt, pal.lower, part("skirt", "skirt", "upper-legs"))


def draw_shoes(cv: Canvas, pal: Palette, ankles: dict[int, Point], local: float = 1.0) -> None:
    """One shoe under each ankle; scaled up (`local`), the sole stays and it rises as a boot."""
    for side in SIDES:
        a = ankles[side]
        shoe = part(_lr("shoe", side), _lr("shoe", side), "lower-legs")
        cy = a[1] + 0.012 + 0.024 * (1.0 - local)  # the sole stays at a[1] + 0.036
        cv.rounded((a[0] + side * 0.004, cy), 0.027 * local, 0.024 * local, 0.01, pal.shoe, shoe)


def draw_torso(cv: Canvas, ident: Identity, pal: Palette) -> None:
    """The torso by garment type: coats and dresses continue over the upper legs.

    A coat stops short of the shorts' hem: captions name the shorts, so they must stay visible.
    """
    upper_lip, upper_atr = _upper_classes(ident)
    torso = [
        (-0.035, 0.118), (0.035, 0.118), (0.088, 0.145), (0.085, 0.19), (0.068, 0.33),
        (0.075, 0.50), (-0.075, 0.50), (-0.068, 0.33), (-0.085, 0.19), (-0.088, 0.145),
    ]  # fmt: skip
    cv.polygon(torso, pal.upper, part(upper_lip, upper_atr, "torso"))
    if ident.upper == "coat":
        hem = [(-0.075, 0.50), (0.075, 0.50), (0.086, 0.58), (-0.086, 0.58)]
        cv.polygon(hem, pal.upper, part("coat", "upper-clothes", "upper-legs"))
    elif ident.upper == "dress":
        hem = [(-0.075, 0.50), (0.075, 0.50), (0.13, 0.70), (-0.13, 0.70)]
        cv.polygon(hem, pal.upper, part("dress", "dress", "upper-legs"))


def draw_arm(cv: Canvas, ident: Identity, pose: Pose, pal: Palette, i: int) -> Point:
    """Arm `i` of `SIDES`: hand, lower arm, upper arm with its elbow, sleeves by garment; its wrist."""
    side = SIDES[i]
    upper_lip, upper_atr = _upper_classes(ident)
    shoulder = (side * 0.076, 0.155)
    up, low = math.radians(pose.arm_up[i]), math.radians(pose.arm_up[i] + pose.arm_bend[i])
    elbow = (shoulder[0] + side * 0.16 * math.sin(up), shoulder[1] + 0.16 * math.cos(up))
    reach = 0.14 * pose.arm_swing[i]
    wrist = (elbow[0] + side * reach * math.sin(low), elbow[1] + reach * math.cos(low))
    skin_up = part(_lr("arm", side), _lr("arm", side), "upper-arms")
    skin_low = part(_lr("arm", side), _lr("arm", side), "lower-arms")
    sleeve_up = part(upper_lip, upper_atr, "upper-arms")
    sleeve_low = part(upper_lip, upper_atr, "lower-arms")
    hand = (wrist[0] + side * 0.018 * math.sin(low), wrist[1] + 0.018 * math.cos(low))
    cv.ellipse(hand, 0.016, 0.021, pal.skin, skin_low)
    if ident.upper in ("shirt", "coat"):  # long sleeves
        cv.limb(elbow, wrist, 0.024, 0.020, pal.upper, sleeve_low)
        cv.limb(shoulder, elbow, 0.029, 0.024, pal.upper, sleeve_up)
        cv.ellipse(elbow, 0.024, 0.024, pal.upper, sleeve_up)
        cv.ellipse(shoulder, 0.027, 0.027, pal.upper, sleeve_up)
        return wrist
    cv.limb(elbow, wrist, 0.019, 0.015, pal.skin, skin_low)
    cv.limb(shoulder, elbow, 0.024, 0.019, pal.skin, skin_up)
    cv.ellipse(elbow, 0.019, 0.019, pal.skin, skin_up)
    if ident.upper == "t-shirt":
        cuff = (shoulder[0] + 0.45 * (elbow[0] - shoulder[0]), shoulder[1] + 0.45 * 0.16)
        cv.limb(shoulder, cuff, 0.030, 0.027, pal.upper, sleeve_up)
        cv.ellipse(shoulder, 0.028, 0.028, pal.upper, sleeve_up)
    else:  # sleeveless dress: a bare, rounded shoulder
        cv.ellipse(shoulder, 0.023, 0.023, pal.skin, skin_up)
    return wrist


def draw_head(cv: Canvas, ident: Identity, pal: Palette, local: float = 1.0) -> None:
    """Face, eyes, hair on top (long hair adds side locks), a hat leaving a band of hair."""
    face, hair = part("face", "face", "head"), part("hair", "hair", "head")
    head_c, head_rx, head_ry = (0.0, 0.068), 0.042, 0.058
    cv.ellipse(head_c, head_rx, head_ry, pal.skin, face)
    for side in SIDES:
        cv.ellipse((side * 0.016, 0.072), 0.005, 0.004, (40, 30, 30), face)
    cv.chord((0.0, 0.064), head_rx + 0.005, head_ry + 0.006, 185, 355, pal.hair, hair)
    if ident.hair_length == "long":
        for side in SIDES:
            lock = [
                (side * (head_rx - 0.011), 0.05),
                (side * (head_rx + 0.007), 0.05),
                (side * (head_rx + 0.009), 0.115),
                (side * (head_rx - 0.004), 0.115),
            ]
            cv.polygon(lock, pal.hair, hair)
    if ident.hat_colour is not None:
        hat = part("hat", "hat", "head")
        if local == 1.0:
            cv.chord((0.0, 0.062), head_rx + 0.008, head_ry + 0.008, 215, 325, pal.hat, hat)
        else:  # a crown standing on the brim, `local` times the cap's height
            crown = 0.045 * local
            cv.rounded((0.0, 0.030 - crown / 2), head_rx + 0.004, crown / 2, 0.004, pal.hat, hat)
        # The brim sits above the hair's lower edge, so a band of hair shows below the hat.
        cv.rounded((0.0, 0.030), head_rx + 0.014, 0.006 * local, 0.003, pal.hat, hat)


def draw_scarf(cv: Canvas, ident: Identity, pose: Pose, pal: Palette, local: float = 1.0) -> None:
    """A scarf round the neck, its loose end on the side away from the bag (per image);
    `local` scales the band's depth and the end's width."""
    if ident.scarf_colour is None:
        return
    scarf = part("scarf", "scarf", "torso")
    low = 0.15 + 0.038 * (local - 1.0)
    cv.polygon([(-0.045, 0.112), (0.045, 0.112), (0.05, low), (-0.05, low)], pal.scarf, scarf)
    d = 0.015 * (local - 1.0)  # written so that scale 1 gives the old numbers exactly
    tail = [(0.012 - d, 0.14), (0.042 + d, 0.14), (0.038 + d, 0.27), (0.016 - d, 0.27)]
    cv.polygon([(-pose.bag_side * x, y) for x, y in tail], pal.scarf, scarf)


def draw_backpack(cv: Canvas, pal: Palette, side: int, local: float = 1.0) -> None:
    """A backpack's pack, behind the body and showing on `side` (wider outwards by `local`)."""
    rx = 0.036 * local
    cv.rounded((side * (0.088 + 0.036 * (local - 1.0)), 0.29), rx, 0.12, 0.012, pal.bag, _BAG)


def draw_backpack_straps(cv: Canvas, pal: Palette, local: float = 1.0) -> None:
    """A backpack's two straps, over the torso."""
    w = 0.008 * local
    for side in SIDES:
        cv.limb((side * 0.05, 0.125), (side * 0.056, 0.36), w, w, pal.bag, _BAG)


def draw_handbag(cv: Canvas, pal: Palette, wrist: Point, side: int, local: float = 1.0) -> None:
    """A handbag hanging by two straps from the hand at `wrist` on `side`; `local` scales the
    bag, its top staying where the straps end."""
    centre = (wrist[0] + side * 0.012 * local, wrist[1] + 0.085 + 0.032 * (local - 1.0))
    for dx in (-0.02, 0.02):
        top = (wrist[0], wrist[1] + 0.012)
        cv.line(top, (centre[0] + dx, centre[1] - 0.03 * local), 0.006, pal.bag, _BAG)
    cv.rounded(centre, 0.036 * local, 0.032 * local, 0.008, pal.bag, _BAG)
