"""Old import path of the Ray Tune trainable (`bilma.sweep.backends.ray_trainable`), for Ray
experiments started before the package was layered."""

from bilma.sweep.backends.ray_trainable import *  # noqa: F403
from bilma.sweep.backends.ray_trainable import run_trial  # noqa: F401
