"""The Cube world's MuJoCo scene ("mincube"): a floating parallel gripper and one free cube on a table.

Facts from OGBench's single-cube task (spec §5): a 4-cm cube (half-size 0.02 m, density 1240, friction
1, solref 0.004) on a floor at z = 0; physics dt 0.002 s with the implicitfast integrator, elliptic
friction cones and impratio 10; a parallel gripper whose two finger slides (0–0.04 m each) are coupled
by a joint equality and driven by one position actuator (kp 1000, force ±100 N).

Our own choices:
- The hand is a gantry, not a free body welded to a mocap: slide joints x, y, z and a yaw hinge, each
  driven by a stiff, critically damped position servo, with gravity compensated. The hand pose is then
  exactly four joint values (hand_x/y/z equal the pinch site's world position), so a state restores
  it exactly; a welded free body would also tilt and sag by amounts the state would have to carry.
  The env moves the servo targets along a minimum-jerk path within each 0.05-s control step, and the
  hand settles by its end (a free 5-cm move ends within 0.5 mm, a 0.3-rad turn within 6 mrad).
- The finger pads open to an 8-cm gap (±2 cm of slack around the cube) and close fully to 0, so they
  meet the cube's faces at closure 0.5 and a full closing command squeezes it with 20 N. The pads are
  as stiff as the cube (solref 0.004) and the finger slides carry 0.1 kg of armature, which keeps the
  coupling equality tight (without it the fingers differ by 1.6 mm under the grip): a grasp then holds
  through full-speed moves (1 mm of slip over 17 of them).
- One finger is black and one white, so the hand's yaw is visible over the full turn.
- A contact sensor `grip` counts the cube's contact points with the hand (pads, palm or wrist).
- No target marker: a goal is a scene state and its goal image is that scene.
- A fixed camera from the side (looking along +y, 30° down, a long lens) frames the cube's sampling
  area and the hand (fingers and palm) up to 0.2 m above its far edge: at 64 px the cube spans about
  7 × 8 px (median area 42 px over reset states), about twice the size (four times the area) it has from
  OGBench's `front_pixels` camera. Seen from the side, fingers closing along the line of sight hide the
  cube; the expert therefore grasps with the fingers across the view.
- Rendering cost (spec §3): no shadows (also switched off in the renderer with reflection and skybox),
  a coarse floor grid (plane size[2] = 0.25) and no meshes.
"""

from __future__ import annotations

import math

CUBE_HALF_SIZE = 0.02
CUBE_DENSITY = 1240.0
FINGER_TRAVEL = 0.04  # each finger slides 0 (open) … 0.04 m (closed)
FINGER_OPEN_HALF_GAP = 0.04  # pad face to the pinch axis when open: an 8-cm gap
PINCH_TO_FINGER_BOTTOM = 0.017  # the pads reach this far below the pinch site

HAND_KP, HAND_KV = 10000.0, 87.0  # translation servos (N/m, N·s/m): critically damped on 0.19 kg
YAW_KP, YAW_KV = 100.0, 0.93  # yaw servo (N·m/rad, N·m·s/rad): critically damped on 0.0022 kg·m²
GRIPPER_KP, GRIPPER_KV = 1000.0, 20.0
GRIPPER_FORCE = 100.0

TIMESTEP = 0.002
SUBSTEPS = 25  # physics steps per env step: 0.05 s, 20 Hz control

CUBE_COLOR = (41, 102, 242)  # saturated blue: far from the VoE colour change (a red) and from the floor
FLOOR_COLORS = ((199, 194, 184), (168, 163, 153))  # a low-contrast checker of 10-cm squares
HAND_COLOR = (140, 140, 148)
LEFT_FINGER_COLOR = (38, 38, 43)
RIGHT_FINGER_COLOR = (242, 242, 242)

# The camera: at CAMERA_POS, looking along +y tilted CAMERA_PITCH down, vertical field CAMERA_FOVY.
CAMERA_PITCH = math.radians(30.0)
CAMERA_POS = (0.425, -1.712, 1.085)
CAMERA_FOVY = 15.9


def _rgb(color: tuple[int, int, int]) -> str:
    return " ".join(f"{c / 255:.4f}" for c in color)


def _rgba(color: tuple[int, int, int]) -> str:
    return _rgb(color) + " 1"


_FINGER_HALF = (0.012, 0.006, 0.0235)  # pad half-sizes: along hand x, closing axis y, height z
_FINGER_Z = _FINGER_HALF[2] - PINCH_TO_FINGER_BOTTOM  # pad centre height above the pinch site
_FINGER_Y = FINGER_OPEN_HALF_GAP + _FINGER_HALF[1]  # pad centre off the pinch axis when open
_CAMERA_UP = (0.0, math.sin(CAMERA_PITCH), math.cos(CAMERA_PITCH))


def _finger(side: str, sign: int, color: tuple[int, int, int]) -> str:
    return f"""
      <body name="finger_{side}" pos="0 {sign * _FINGER_Y:.4f} 0" gravcomp="1">
        <joint name="finger_{side}" type="slide" axis="0 {-sign} 0" range="0 {FINGER_TRAVEL}" armature="0.1"/>
        <geom name="finger_{side}" class="hand" size="{_FINGER_HALF[0]} {_FINGER_HALF[1]} {_FINGER_HALF[2]}"
              pos="0 0 {_FINGER_Z:.4f}" solref="0.004 1" rgba="{_rgba(color)}"/>
      </body>"""


MJCF = f"""
<mujoco model="cube">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{TIMESTEP}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <quality shadowsize="0"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.45 0.45 0.45" specular="0 0 0"/>
  </visual>
  <asset>
    <texture name="checker" type="2d" builtin="checker" width="64" height="64"
             rgb1="{_rgb(FLOOR_COLORS[0])}" rgb2="{_rgb(FLOOR_COLORS[1])}"/>
    <material name="floor" texture="checker" texrepeat="5 5" texuniform="true" reflectance="0"/>
  </asset>
  <default>
    <geom friction="1 0.005 0.0001"/>
    <default class="hand">
      <geom type="box" density="500" rgba="{_rgba(HAND_COLOR)}"/>
    </default>
  </default>
  <worldbody>
    <light name="sun" directional="true" pos="0 0 2" dir="0.3 0.2 -1" diffuse="0.5 0.5 0.5"
           specular="0 0 0" castshadow="false"/>
    <geom name="floor" type="plane" size="1.5 1.5 0.25" material="floor"/>
    <camera name="view" pos="{" ".join(map(str, CAMERA_POS))}" fovy="{CAMERA_FOVY}"
            xyaxes="1 0 0 {_CAMERA_UP[0]} {_CAMERA_UP[1]:.4f} {_CAMERA_UP[2]:.4f}"/>
    <body name="hand" gravcomp="1">
      <joint name="hand_x" type="slide" axis="1 0 0" armature="0.1"/>
      <joint name="hand_y" type="slide" axis="0 1 0" armature="0.1"/>
      <joint name="hand_z" type="slide" axis="0 0 1" armature="0.1"/>
      <joint name="hand_yaw" type="hinge" axis="0 0 1" range="{-math.pi} {math.pi}" armature="0.002"/>
      <site name="pinch" size="0.005" rgba="0 0 0 0"/>
      <geom name="palm" class="hand" size="0.016 0.056 0.01" pos="0 0 0.04"/>
      <geom name="wrist" class="hand" type="cylinder" size="0.018 0.04" pos="0 0 0.09"/>
      {_finger("left", 1, LEFT_FINGER_COLOR)}
      {_finger("right", -1, RIGHT_FINGER_COLOR)}
    </body>
    <body name="cube" pos="0.425 0 {CUBE_HALF_SIZE}">
      <freejoint name="cube"/>
      <geom name="cube" type="box" size="{CUBE_HALF_SIZE} {CUBE_HALF_SIZE} {CUBE_HALF_SIZE}"
            density="{CUBE_DENSITY}" solref="0.004 1" rgba="{_rgba(CUBE_COLOR)}"/>
    </body>
  </worldbody>
  <equality>
    <joint joint1="finger_right" joint2="finger_left" solref="0.005 1"/>
  </equality>
  <actuator>
    <position name="hand_x" joint="hand_x" kp="{HAND_KP}" kv="{HAND_KV}" forcerange="-200 200"/>
    <position name="hand_y" joint="hand_y" kp="{HAND_KP}" kv="{HAND_KV}" forcerange="-200 200"/>
    <position name="hand_z" joint="hand_z" kp="{HAND_KP}" kv="{HAND_KV}" forcerange="-200 200"/>
    <position name="hand_yaw" joint="hand_yaw" kp="{YAW_KP}" kv="{YAW_KV}" forcerange="-20 20"/>
    <position name="gripper" joint="finger_left" kp="{GRIPPER_KP}" kv="{GRIPPER_KV}"
              ctrlrange="0 {FINGER_TRAVEL}" forcerange="-{GRIPPER_FORCE} {GRIPPER_FORCE}"/>
  </actuator>
  <sensor>
    <contact name="grip" geom1="cube" subtree2="hand" num="1" data="found"/>
  </sensor>
</mujoco>
"""
