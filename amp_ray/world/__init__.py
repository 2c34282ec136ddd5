"""The embedded synthetic world: images with exact ground truth and a planted language prior."""

from amp_ray.world.generate import SPLIT_MODES, World
from amp_ray.world.scene import Scene, SceneSampler, WorldObject

__all__ = ["SPLIT_MODES", "Scene", "SceneSampler", "World", "WorldObject"]
