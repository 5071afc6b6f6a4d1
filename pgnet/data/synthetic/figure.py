"""The articulated stick figure: a sampled build, facing and pose on the 17-point skeleton,
as key points and the parts that draw it (torso, limbs, head with face).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pgnet.data.skeleton import KEYPOINT_NAMES, NUM_KEYPOINTS
from pgnet.data.synthetic.parts import Part, _disc, _poly, _seg

# Key-point indices, by name.
KP = {name: i for i, name in enumerate(KEYPOINT_NAMES)}


@dataclass
class _Figure:
    keypoints: np.ndarray  # (17, 2)
    self_hidden: np.ndarray  # (17,) bool: behind the figure's own head
    parts: list[Part]  # back to front
    height: float  # standing height in pixels
    colours: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def moved(self, rotation: float, offset: np.ndarray) -> "_Figure":
        c, s = math.cos(rotation), math.sin(rotation)
        rot = np.array([[c, -s], [s, c]])

        def move(p: np.ndarray) -> np.ndarray:
            return p @ rot.T + offset

        parts = [(k, move(p), size, role) for k, p, size, role in self.parts]
        return _Figure(move(self.keypoints), self.self_hidden, parts, self.height, self.colours)


def _down(theta: float) -> np.ndarray:
    """Unit vector: theta=0 points straight down (image y), positive turns toward +x."""
    return np.array([math.sin(theta), math.cos(theta)])


def _sample_yaw(rng: np.random.Generator) -> float:
    """Facing: 0 looks at the camera, +pi/2 looks to the image's right, pi away from the camera."""
    u = rng.random()
    if u < 0.55:
        return float(np.clip(rng.normal(0.0, 0.35), -0.7, 0.7))
    if u < 0.85:
        return float(rng.choice([-1.0, 1.0]) * rng.uniform(0.7, 1.75))
    return float(math.pi + np.clip(rng.normal(0.0, 0.35), -0.7, 0.7))


def _limb_angles(rng: np.random.Generator, arm: bool) -> tuple[float, float]:
    """(upper segment angle away from the body, bend of the lower segment), radians."""
    u = rng.random()
    if arm:
        if u < 0.6:
            upper = rng.uniform(0.05, 1.0)  # hanging, a little out
        elif u < 0.9:
            upper = rng.uniform(1.0, 2.9)  # raised
        else:
            upper = rng.uniform(-0.7, 0.05)  # across the body
        bend = float(np.clip(rng.normal(0.0, 0.9), -2.5, 2.5))
    else:
        upper = rng.uniform(-0.15, 0.5) if u < 0.8 else rng.uniform(-1.0, 1.6)  # standing / kicking, sitting
        bend = float(np.clip(rng.normal(0.0, 0.2), -0.6, 0.6)) if rng.random() < 0.75 else rng.uniform(-1.8, 1.8)
    return float(upper), bend


def _sample_figure(rng: np.random.Generator, height: float) -> _Figure:
    """A posed figure in its body frame: mid-hip at the origin, image axes (y down)."""
    H = height
    build = rng.uniform(0.8, 1.25)  # aspect: narrow to broad
    lean = float(np.clip(rng.normal(0.0, 0.14), -0.45, 0.45))
    yaw = _sample_yaw(rng)
    cy, sy = math.cos(yaw), math.sin(yaw)
    up = np.array([math.sin(lean), -math.cos(lean)])  # along the torso, toward the head
    across = np.array([math.cos(lean), math.sin(lean)])  # the torso's image-right

    torso_len = 0.29 * H * rng.uniform(0.9, 1.1)
    head_r = 0.063 * H * rng.uniform(0.9, 1.1)
    shoulder_half, hip_half = 0.115 * H * build, 0.075 * H * build
    widths = {"upper_arm": 0.048, "forearm": 0.04, "thigh": 0.064, "shin": 0.052, "neck": 0.045, "foot": 0.036}
    width = {k: max(2.0, v * H * build) for k, v in widths.items()}
    sleeves, trousers = rng.random() < 0.5, rng.random() < 0.75

    kp = np.zeros((NUM_KEYPOINTS, 2))
    hidden = np.zeros(NUM_KEYPOINTS, dtype=bool)
    neck = torso_len * up
    # The person's left side projects to +x when facing the camera (cos yaw = 1), -x from the back.
    kp[KP["left_shoulder"]] = neck + across * shoulder_half * cy
    kp[KP["right_shoulder"]] = neck - across * shoulder_half * cy
    kp[KP["left_hip"]] = across * hip_half * cy
    kp[KP["right_hip"]] = -across * hip_half * cy

    # Head: tilted a little against the torso; face points sit on the head disc by azimuth.
    tilt = lean + float(np.clip(rng.normal(0.0, 0.15), -0.4, 0.4))
    head_up = np.array([math.sin(tilt), -math.cos(tilt)])
    head_x = np.array([math.cos(tilt), math.sin(tilt)])
    head_c = neck + head_up * (0.045 * H + head_r)

    def on_head(azimuth: float, elevation: float) -> np.ndarray:
        offset = head_x * (0.85 * head_r * math.sin(azimuth)) - head_up * (elevation * head_r)
        # A point on the silhouette stays on the head's pixels, however few they are.
        reach = max(0.0, head_r - 0.75)
        length = float(np.hypot(*offset))
        return head_c + (offset * (reach / length) if length > reach else offset)

    eye_gap = 0.6
    face = {"nose": (yaw, 0.15, -0.2), "left_eye": (yaw + eye_gap, -0.2, -0.05),
            "right_eye": (yaw - eye_gap, -0.2, -0.05), "left_ear": (yaw + math.pi / 2, 0.0, -0.3),
            "right_ear": (yaw - math.pi / 2, 0.0, -0.3)}
    for name, (azimuth, elevation, min_cos) in face.items():
        kp[KP[name]] = on_head(azimuth, elevation)
        hidden[KP[name]] = math.cos(azimuth) < min_cos  # on the far side of the head

    # Limbs, per side. In profile an arm or leg may swing either way; otherwise "out" is away from the body.
    limb_parts: dict[str, list[Part]] = {}
    facing_x = 1.0 if sy >= 0 else -1.0
    for side, k in (("left", 1.0), ("right", -1.0)):
        shade = "_left" if side == "left" else ""
        out = math.copysign(1.0, k * cy) if abs(cy) > 0.3 else float(rng.choice([-1.0, 1.0]))
        upper, bend = _limb_angles(rng, arm=True)
        a_upper = -lean + out * upper
        a_lower = a_upper + bend
        shoulder = kp[KP[f"{side}_shoulder"]]
        elbow = shoulder + _down(a_upper) * 0.165 * H * rng.uniform(0.7, 1.0)
        wrist = elbow + _down(a_lower) * 0.145 * H * rng.uniform(0.7, 1.0)
        kp[KP[f"{side}_elbow"]], kp[KP[f"{side}_wrist"]] = elbow, wrist
        hand_r = max(1.2, 0.024 * H)
        limb_parts[f"{side}_arm"] = [
            _seg(shoulder, elbow, width["upper_arm"], "shirt" + shade),
            _seg(elbow, wrist, width["forearm"], ("shirt" if sleeves else "skin") + shade),
            _disc(wrist + _down(a_lower) * hand_r * 0.8, hand_r, "skin" + shade),
        ]
        out = math.copysign(1.0, k * cy) if abs(cy) > 0.3 else float(rng.choice([-1.0, 1.0]))
        upper, bend = _limb_angles(rng, arm=False)
        a_upper = 0.3 * -lean + out * upper
        a_lower = a_upper + bend
        hip = kp[KP[f"{side}_hip"]]
        knee = hip + _down(a_upper) * 0.235 * H * rng.uniform(0.75, 1.0)
        ankle = knee + _down(a_lower) * 0.235 * H * rng.uniform(0.75, 1.0)
        kp[KP[f"{side}_knee"]], kp[KP[f"{side}_ankle"]] = knee, ankle
        # Feet point where the person faces in profile, splay outward seen from the front or back.
        foot_turn = facing_x * 1.4 if abs(cy) < 0.5 else out * 0.6
        limb_parts[f"{side}_leg"] = [
            _seg(hip, knee, width["thigh"], "pants" + shade),
            _seg(knee, ankle, width["shin"], ("pants" if trousers else "skin") + shade),
            _seg(ankle, ankle + _down(a_lower + foot_turn) * 0.06 * H, width["foot"], "shoe" + shade),
        ]

    # Torso: as wide as the shoulders from the front, as deep as the chest in profile.
    half_top = math.hypot(shoulder_half * cy, 0.06 * H * sy)
    half_hip = max(math.hypot(hip_half * cy, 0.065 * H * sy), width["thigh"] / 2)
    torso = _poly([neck + across * half_top, neck - across * half_top,
                   -across * half_hip, across * half_hip], "shirt")
    waist = _poly([across * half_hip * 1.02 + up * 0.07 * H, -across * half_hip * 1.02 + up * 0.07 * H,
                   -across * half_hip * 1.02, across * half_hip * 1.02], "pants")
    neck_part = _seg(neck, head_c, width["neck"], "skin")

    head = _head_parts(head_c, head_r, tilt, cy, kp, hidden)

    # Back to front: the far side's limbs, then the body, then the near side's.
    far = "left" if sy > 0.3 else ("right" if sy < -0.3 else None)
    legs = [limb_parts[f"{far}_leg"]] if far else []
    legs += [limb_parts[f"{s}_leg"] for s in ("left", "right") if s != far]
    back_arms = [limb_parts[f"{far}_arm"]] if far else []
    front_arms = [limb_parts[f"{s}_arm"] for s in ("left", "right") if s != far]
    parts: list[Part] = []
    for group in back_arms + legs:
        parts += group
    parts += [torso, waist, neck_part] + head
    for group in front_arms:
        parts += group
    return _Figure(kp, hidden, parts, H)


def _head_parts(centre: np.ndarray, r: float, tilt: float, cos_yaw: float,
                kp: np.ndarray, hidden: np.ndarray) -> list[Part]:
    """Head disc, hair (a cap, or all of it seen from the back), eyes and nose where they face us."""
    if cos_yaw < -0.3:
        return [_disc(centre, r, "hair")]
    angles = np.linspace(math.radians(-165), math.radians(-15), 9) + tilt
    cap = centre + r * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    parts = [_disc(centre, r, "skin"), _poly(cap, "hair")]
    dot = max(0.6, 0.14 * r)
    for name in ("left_eye", "right_eye"):
        if not hidden[KP[name]]:
            parts.append(_disc(kp[KP[name]], dot, "eye"))
    if not hidden[KP["nose"]]:
        parts.append(_disc(kp[KP["nose"]], dot, "nose"))
    return parts
